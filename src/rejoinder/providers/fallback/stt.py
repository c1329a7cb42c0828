"""The STT chain: the first backend hears the utterance; a failure replays its audio to the next."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rejoinder.core.audio import PCM
from rejoinder.core.clock import Clock
from rejoinder.providers.base import STT, STTStream
from rejoinder.providers.breaker import FallbackStats
from rejoinder.providers.fallback.chain import UNLIMITED_S, Backend, Chain


class FallbackSTT(STT):
    """Speech to text from the first backend that answers."""

    timeout_s = UNLIMITED_S
    stream_idle_timeout_s = UNLIMITED_S

    def __init__(self, backends: Sequence[Backend[STT]], stats: FallbackStats | None = None,
                 clock: Clock | None = None) -> None:
        self.stats = stats or FallbackStats()
        self.clock = clock or Clock()
        self.chain = Chain("stt", backends, self.stats, self.clock)
        first = self.chain.backends[0].provider
        self.name = f"chain:{self.chain.backends[0].name}"
        self.punctuates = first.punctuates if first is not None else False

    async def _transcribe(self, audio: PCM) -> str:
        return await self.transcribe_from(audio, None, None)

    async def transcribe_from(self, audio: PCM, lead: Backend[STT] | None,
                              session: STTStream | None) -> str:
        """The transcript from the first backend that answers: ``lead``'s own ``session``
        (it heard the audio as it came), the others the whole ``audio``."""
        async def ask(b: Backend[STT]) -> str:
            if b is lead and session is not None:
                return await session.finish()
            return await (await b.get()).transcribe(audio)

        return await self.chain.first(ask)

    def stream(self) -> STTStream:
        return _FallbackSTTStream(self)

    async def warm(self) -> None:
        await self.chain.warm(lambda p: p.warm())

    async def close(self) -> None:
        await self.chain.close()


class _FallbackSTTStream:
    """The first backend's own session hears the utterance as it comes (incremental
    engines keep their head start); the audio is kept for the others."""

    def __init__(self, stt: FallbackSTT) -> None:
        self._stt = stt
        self._lead = stt.chain.backends[0]
        self._session = self._lead.provider.session() if self._lead.provider else None
        self._frames: list[PCM] = []
        self._speech = 0
        self._final: str | None = None

    async def push(self, frame: PCM, speech: bool | None = None) -> None:
        self._frames.append(frame)
        if speech or speech is None:
            self._speech += 1
            self._final = None
        if self._session is not None:
            await self._session.push(frame, speech)

    async def finish(self) -> str:
        if self._final is not None:
            return self._final
        speech = self._speech
        audio = np.concatenate(self._frames) if self._frames else np.zeros(0, np.int16)
        text = await self._stt.transcribe_from(audio, self._lead, self._session)
        if speech == self._speech:
            self._final = text
        return text

    def partial(self) -> str:
        return self._session.partial() if self._session is not None else ""

    def reset(self) -> None:
        self._frames = []
        self._speech = 0
        self._final = None
        if self._session is not None:
            self._session.reset()


# -- language model ------------------------------------------------------------------
