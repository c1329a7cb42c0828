"""A cache of synthesised short phrases: the greeting, fillers, and the short replies an
agent says again and again ("Sure.", "Okay, one moment.").

It wraps any TTS provider and is shared by every call. A phrase of at most ``max_words``
words (or one primed at start, whatever its length) is looked up by its exact text
(punctuation changes the prosody); a fresh entry (younger than ``ttl_s``) is played at
once as one chunk, anything else is synthesised and, if short, kept. The oldest-used
entries go first beyond ``max_entries``.

The hit rate counts lookups of short phrases only (long ones are never cached) and not
the phrases primed at start.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import numpy as np

from rejoinder.core.audio import PCM
from rejoinder.core.clock import Clock
from rejoinder.core.errors import ConfigError
from rejoinder.providers.base import TTS


@dataclass(frozen=True)
class PhraseCacheOptions:
    # Stock replies are often 5-8 words ("I'm sorry for any confusion.", "Sure, I can help
    # with that."): a first clause that long costs Piper ~150 ms on 2 cores, the largest
    # single step of a turn after the transcript. An entry of 8 words is ~2.5 s of audio,
    # ~110 KB at 22.05 kHz, so a full cache holds ~28 MB.
    max_words: int = 8
    ttl_s: float = 3600.0
    max_entries: int = 256

    def __post_init__(self) -> None:
        if self.max_words < 1 or self.max_entries < 1:
            raise ConfigError("tts.phrase_cache", "max_words and max_entries must be >= 1")
        if self.ttl_s <= 0:
            raise ConfigError("tts.phrase_cache.ttl_s", "must be positive")


@dataclass
class _Entry:
    audio: PCM
    stored: float


class PhraseCache(TTS):
    """``tts`` with its short phrases remembered."""

    def __init__(self, tts: TTS, options: PhraseCacheOptions | None = None,
                 clock: Clock | None = None) -> None:
        self.inner = tts
        self.options = options or PhraseCacheOptions()
        self.clock = clock or Clock()
        self.name = tts.name
        self.sample_rate = tts.sample_rate
        self.first_item_timeout_s = tts.first_item_timeout_s
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._primed: set[str] = set()  # kept whatever their length (the greeting)

    def cacheable(self, text: str) -> bool:
        key = text.strip()
        return key in self._primed or 0 < len(key.split()) <= self.options.max_words

    def holds(self, text: str) -> bool:
        """Whether ``text`` would be played from the cache now (a fresh entry)."""
        return self._fresh(text.strip()) is not None

    def _fresh(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and self.clock.now() - entry.stored < self.options.ttl_s:
            return entry
        return None

    async def _synthesize(self, text: str) -> AsyncIterator[PCM]:
        async for chunk in self._lookup(text, count=True):
            yield chunk

    async def _lookup(self, text: str, *, count: bool) -> AsyncIterator[PCM]:
        key = text.strip()
        short = self.cacheable(key)
        if short:
            entry = self._fresh(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += count
                yield entry.audio
                return
            self.misses += count
        chunks: list[PCM] = []
        async for chunk in self.inner.synthesize(text):
            if short:
                chunks.append(chunk)
            yield chunk
        if short and chunks:
            self._entries[key] = _Entry(np.concatenate(chunks), self.clock.now())
            self._entries.move_to_end(key)
            while len(self._entries) > self.options.max_entries:
                self._entries.popitem(last=False)

    async def prime(self, phrases: Iterable[str]) -> None:
        """Synthesise ``phrases`` now (at start) so that their first use is free; they are
        kept whatever their length."""
        for phrase in phrases:
            if phrase.strip():
                self._primed.add(phrase.strip())
                async for _ in self._lookup(phrase, count=False):
                    pass

    def stats(self) -> dict[str, float | int | None]:
        lookups = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._entries),
                "hit_rate": round(self.hits / lookups, 3) if lookups else None}

    async def warm(self) -> None:
        await self.inner.warm()

    def close(self) -> object:
        close = getattr(self.inner, "close", None)
        return close() if close is not None else None
