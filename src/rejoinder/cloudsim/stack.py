"""The provider stack that talks to a simulated cloud (or any server with the same protocol)."""

from __future__ import annotations

from rejoinder.providers.base import VAD, Stack
from rejoinder.providers.local.silero import SileroOptions, SileroVAD
from rejoinder.providers.openai.llm import OpenAILLM
from rejoinder.providers.remote import RemoteSTT, RemoteTTS


def cloud_stack(base_url: str, *, vad: VAD | None = None, tts_sample_rate: int = 24_000,
                streaming: bool = True) -> Stack:
    """Silero VAD in process (unless ``vad`` is given); STT, LLM and TTS at ``base_url``.
    The STT streams (``streaming``), as every cloud STT made for voice agents does.

    Loading Silero blocks for a moment: from async code, call this via ``asyncio.to_thread``.
    """
    base = base_url.rstrip("/")
    return Stack(
        vad=vad or SileroVAD(SileroOptions()),
        stt=RemoteSTT(base, streaming=streaming),
        llm=OpenAILLM(base + "/v1", model="cloudsim"),
        tts=RemoteTTS(base, sample_rate=tts_sample_rate),
    )
