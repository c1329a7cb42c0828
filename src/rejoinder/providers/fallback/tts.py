"""The TTS chain: a clause said again whole by the next backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

import numpy as np

from rejoinder.core.audio import PCM, Resampler
from rejoinder.core.clock import Clock
from rejoinder.core.errors import ProviderError
from rejoinder.providers.base import TTS
from rejoinder.providers.breaker import FallbackStats
from rejoinder.providers.fallback.chain import UNLIMITED_S, Backend, Chain


class FallbackTTS(TTS):
    """Speech from the first backend that answers, at the first backend's sample rate."""

    first_item_timeout_s = UNLIMITED_S
    stream_idle_timeout_s = UNLIMITED_S

    def __init__(self, backends: Sequence[Backend[TTS]], stats: FallbackStats | None = None,
                 clock: Clock | None = None, sample_rate: int | None = None) -> None:
        self.stats = stats or FallbackStats()
        self.clock = clock or Clock()
        self.chain = Chain("tts", backends, self.stats, self.clock)
        first = self.chain.backends[0].provider
        self.name = f"chain:{self.chain.backends[0].name}"
        self.sample_rate = sample_rate or (first.sample_rate if first is not None else 22_050)

    async def _synthesize(self, text: str) -> AsyncIterator[PCM]:
        last: ProviderError | None = None
        for b in self.chain.allowed():
            started = self.clock.now()
            chunks = 0
            settled = False
            try:
                tts = await b.get()
                resample = Resampler(tts.sample_rate, self.sample_rate) \
                    if tts.sample_rate != self.sample_rate else None
                async with aclosing(tts.synthesize(text)) as audio:  # type: ignore[type-var]
                    async for chunk in audio:
                        chunks += 1
                        yield resample(chunk) if resample is not None else chunk
                if resample is not None:
                    tail = resample(np.zeros(0, np.int16), last=True)
                    if tail.size:
                        yield tail
                settled = True
                b.breaker.succeeded()
                return
            except ProviderError as exc:
                settled = True
                self.chain.failed(b, exc, started,
                                  f" ({chunks} chunks into a clause: said again whole)"
                                  if chunks else "")
                last = exc
            finally:
                if not settled:
                    b.breaker.released()
        raise self.chain.exhausted(last)

    async def warm(self) -> None:
        await self.chain.warm(lambda p: p.warm())

    async def close(self) -> None:
        await self.chain.close()
