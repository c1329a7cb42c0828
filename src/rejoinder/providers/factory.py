"""Build the provider stack a server runs with, from configuration.

Each kind is chosen on its own: local (the embedded models) or a remote service
(``stt.provider = "remote"``, ``llm.provider = "openai"``, ``tts.provider = "remote"``).
Voice activity detection and the end-of-turn model (``turn.model``) always run locally.
``kind="fake"`` replaces every local provider with a fixed-latency fake (no models; for
trying the page and for tests) and ends turns on silence alone. Every TTS is wrapped in a
:class:`PhraseCache`; every LLM redacts the caller's words unless ``llm.redact`` is off.
Every STT, LLM and TTS gets its section's ``stream_idle_timeout_s``. A section with
``backends`` (or ``fallback_to_local``) gets a chain (:mod:`rejoinder.providers.chains`).
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

from rejoinder.config import Config
from rejoinder.core.errors import MissingExtraError
from rejoinder.guardrails import build_guardrails
from rejoinder.providers.base import LLM, STT, TTS, VAD, Stack, TurnModel
from rejoinder.providers.breaker import FallbackStats
from rejoinder.providers.chains import (
    build_llm_chain,
    build_stt_chain,
    build_tts_chain,
    chained,
)
from rejoinder.providers.phrase_cache import PhraseCache

log = logging.getLogger(__name__)


def build_stack(config: Config, kind: str = "local") -> Stack:
    """Load every provider once (blocking: call it through ``asyncio.to_thread``)."""
    if kind not in ("local", "fake"):
        raise ValueError(f"unknown stack {kind!r}")
    with ExitStack() as loaded:  # closes what did load if a later provider fails
        vad = _vad(kind)
        loaded.callback(_close, vad)
        stats = FallbackStats()  # shared by the chains of [[stt/llm/tts.backends]], if any
        if chained(config.stt):
            stt: STT = build_stt_chain(config, kind, stats)
        else:
            stt = _stt(config, kind)
            stt.stream_idle_timeout_s = config.stt.stream_idle_timeout_s
        loaded.callback(_close, stt)
        if chained(config.llm):
            llm: LLM = build_llm_chain(config, kind, stats)
        else:
            llm = _llm(config, kind)
            llm.stream_idle_timeout_s = config.llm.stream_idle_timeout_s
        loaded.callback(_close, llm)
        if chained(config.tts):
            inner: TTS = build_tts_chain(config, kind, stats)
        else:
            inner = _tts(config, kind)
            inner.stream_idle_timeout_s = config.tts.stream_idle_timeout_s
        tts = PhraseCache(inner)
        tts.stream_idle_timeout_s = inner.stream_idle_timeout_s
        loaded.callback(_close, tts)
        turn = _turn_model(config, kind)
        loaded.pop_all()
    return Stack(vad=vad, stt=stt, llm=llm, tts=tts, turn=turn,
                 guardrails=build_guardrails(config.guardrails))  # opens nothing yet


def _close(provider: object) -> None:
    close = getattr(provider, "close", None)
    if close is not None:
        result = close()
        if hasattr(result, "close"):  # an unawaited coroutine: nothing was opened yet
            result.close()


def _vad(kind: str) -> VAD:
    if kind == "fake":
        from rejoinder.testing.fakes import FakeVAD

        return FakeVAD()
    from rejoinder.providers.local.silero import SileroOptions, SileroVAD

    return SileroVAD(SileroOptions())


def _stt(config: Config, kind: str) -> STT:
    c = config.stt
    if c.provider == "remote":
        from rejoinder.providers.remote.stt import RemoteSTT

        return RemoteSTT(c.url, api_key=c.api_key, streaming=c.streaming)
    if kind == "fake":
        from rejoinder.testing.fakes import FakeSTT, Latency

        return FakeSTT(["(fake transcript)"], Latency(first_s=0.15))
    from rejoinder.providers.local.whisper import WhisperOptions, WhisperSTT

    return WhisperSTT(WhisperOptions())


def _llm(config: Config, kind: str) -> LLM:
    llm = _llm_provider(config, kind)
    llm.redact = config.llm.redact
    return llm


def _llm_provider(config: Config, kind: str) -> LLM:
    c = config.llm
    if c.provider == "openai":
        from rejoinder.providers.openai.llm import OpenAILLM

        return OpenAILLM(c.base_url, c.model, c.api_key, temperature=c.temperature,
                         max_tokens=c.max_tokens, first_token_timeout_s=c.timeout_s)
    if kind == "fake":
        from rejoinder.testing.fakes import FakeLLM, Latency

        return FakeLLM(["This is a fake reply from the test stack."],
                       Latency(first_s=0.25, per_item_s=0.02))
    from rejoinder.providers.local.smollm import SmolLM, SmolLMOptions

    return SmolLM(SmolLMOptions(max_tokens=c.max_tokens, temperature=c.temperature,
                                nice=c.nice))


def _tts(config: Config, kind: str) -> TTS:
    c = config.tts
    if c.provider == "remote":
        from rejoinder.providers.remote.tts import RemoteTTS

        return RemoteTTS(c.url, sample_rate=c.sample_rate, api_key=c.api_key)
    if kind == "fake":
        from rejoinder.testing.fakes import FakeTTS, Latency

        return FakeTTS(Latency(first_s=0.1), rtf=0.1, sample_rate=24_000)
    from rejoinder.providers.local.piper import PiperOptions, PiperTTS

    return PiperTTS(PiperOptions())


def _turn_model(config: Config, kind: str) -> TurnModel | None:
    if config.turn.model == "none" or kind == "fake":
        return None
    from rejoinder.providers.local.smart_turn import SmartTurn

    try:
        return SmartTurn()
    except MissingExtraError as exc:
        # The server still works; turns end on silence alone (mid-sentence pauses longer
        # than turn.end_silence_s then cut the caller off). Said loudly, once.
        log.warning("no end-of-turn model, ending turns on silence alone: %s", exc)
        return None
