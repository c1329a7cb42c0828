"""Build the fallback chains of ``[[stt.backends]]``, ``[[llm.backends]]``, ``[[tts.backends]]``.

Each entry is built as the section alone would build its provider (``providers.factory``),
with its own limits (``timeout_s``: the first item; ``stream_idle_timeout_s``: every gap
after it) and its own circuit breaker. ``fallback_to_local = true`` adds the embedded
model as the last backend, loaded on first use in a worker thread: that first request
pays the model's load time (not measured yet) on top of the failures before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from rejoinder.config import (
    Config,
    LLMBackendOptions,
    LLMOptions,
    STTBackendOptions,
    STTOptions,
    TTSBackendOptions,
    TTSOptions,
)
from rejoinder.providers.base import LLM, STT, TTS
from rejoinder.providers.breaker import BreakerOptions, CircuitBreaker, FallbackStats
from rejoinder.providers.fallback import Backend, FallbackLLM, FallbackSTT, FallbackTTS

P = TypeVar("P", STT, LLM, TTS)


def chained(section: STTOptions | LLMOptions | TTSOptions) -> bool:
    """Does ``section`` ask for a chain rather than its one provider?"""
    return bool(section.backends) or section.fallback_to_local


def _breaker(kind: str, name: str, entry: Any, stats: FallbackStats) -> CircuitBreaker:
    options = BreakerOptions(entry.breaker_failures, entry.breaker_window_s,
                             entry.breaker_cooldown_s)
    return CircuitBreaker(kind, name, options, stats=stats)


def _backends(kind: str, entries: Sequence[Any], local: bool, build: Callable[[Any], P],
              local_entry: Any, stats: FallbackStats) -> list[Backend[P]]:
    out: list[Backend[P]] = []
    for i, entry in enumerate(entries):
        name = entry.name or f"{entry.provider}-{i}"
        out.append(Backend(name, build(entry), breaker=_breaker(kind, name, entry, stats),
                           route=getattr(entry, "route", ""),
                           max_words=getattr(entry, "max_words", 0)))
    if local and all(e.provider != "local" for e in entries):
        async def load() -> P:
            return await asyncio.to_thread(build, local_entry)

        out.append(Backend("local", load=load,
                           breaker=_breaker(kind, "local", local_entry, stats)))
    return out


def build_stt_chain(config: Config, kind: str, stats: FallbackStats) -> FallbackSTT:
    from rejoinder.providers import factory

    def build(entry: STTBackendOptions) -> STT:
        section = STTOptions(provider=entry.provider, url=entry.url, api_key=entry.api_key,
                             streaming=entry.streaming,
                             stream_idle_timeout_s=entry.stream_idle_timeout_s)
        stt = factory._stt(dataclasses.replace(config, stt=section), kind)
        stt.timeout_s = entry.timeout_s
        stt.stream_idle_timeout_s = entry.stream_idle_timeout_s
        return stt

    c = config.stt
    local = STTBackendOptions(stream_idle_timeout_s=c.stream_idle_timeout_s)
    entries = c.backends or [STTBackendOptions(
        provider=c.provider, url=c.url, api_key=c.api_key, streaming=c.streaming,
        stream_idle_timeout_s=c.stream_idle_timeout_s)]
    return FallbackSTT(_backends("stt", entries, c.fallback_to_local, build, local, stats),
                       stats)


def build_llm_chain(config: Config, kind: str, stats: FallbackStats) -> FallbackLLM:
    from rejoinder.providers import factory

    c = config.llm

    def build(entry: LLMBackendOptions) -> LLM:
        section = LLMOptions(provider=entry.provider, base_url=entry.base_url,
                             model=entry.model, api_key=entry.api_key,
                             temperature=entry.temperature, max_tokens=entry.max_tokens,
                             timeout_s=entry.timeout_s,
                             stream_idle_timeout_s=entry.stream_idle_timeout_s,
                             redact=c.redact)
        llm = factory._llm(dataclasses.replace(config, llm=section), kind)
        llm.first_item_timeout_s = entry.timeout_s
        llm.stream_idle_timeout_s = entry.stream_idle_timeout_s
        return llm

    local = LLMBackendOptions(temperature=c.temperature, max_tokens=c.max_tokens,
                              timeout_s=c.timeout_s,
                              stream_idle_timeout_s=c.stream_idle_timeout_s)
    entries = c.backends or [dataclasses.replace(
        local, provider=c.provider, base_url=c.base_url, model=c.model, api_key=c.api_key)]
    return FallbackLLM(_backends("llm", entries, c.fallback_to_local, build, local, stats),
                       stats)


def build_tts_chain(config: Config, kind: str, stats: FallbackStats) -> FallbackTTS:
    from rejoinder.providers import factory

    def build(entry: TTSBackendOptions) -> TTS:
        section = TTSOptions(provider=entry.provider, url=entry.url, api_key=entry.api_key,
                             sample_rate=entry.sample_rate,
                             stream_idle_timeout_s=entry.stream_idle_timeout_s)
        tts = factory._tts(dataclasses.replace(config, tts=section), kind)
        tts.first_item_timeout_s = entry.timeout_s
        tts.stream_idle_timeout_s = entry.stream_idle_timeout_s
        return tts

    c = config.tts
    local = TTSBackendOptions(stream_idle_timeout_s=c.stream_idle_timeout_s)
    entries = c.backends or [dataclasses.replace(
        local, provider=c.provider, url=c.url, api_key=c.api_key, sample_rate=c.sample_rate)]
    backends = _backends("tts", entries, c.fallback_to_local, build, local, stats)
    return FallbackTTS(backends, stats)  # at its first backend's rate
