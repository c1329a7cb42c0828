"""Fake providers with realistic, configurable latency (and failure injection).

Every delay is taken on the injected :class:`Clock`, so on a virtual-time loop
the fakes are exact and instant, and on a real loop they behave like a remote
service with known latency.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE, rms_dbfs
from rejoinder.core.clock import Clock
from rejoinder.providers.base import (
    LLM,
    STT,
    TTS,
    VAD,
    ChatMessage,
    Stack,
    TurnModel,
    VADStream,
)
from rejoinder.tools.base import Tool, ToolCall

#: A scripted LLM reply: text (streamed word by word), or text and tool calls in order.
Scripted = str | Sequence[str | ToolCall]


@dataclass(frozen=True)
class Latency:
    """When the first item comes, and how far apart the following ones are."""

    first_s: float = 0.0
    per_item_s: float = 0.0
    jitter_s: float = 0.0   # uniform 0..jitter added to every wait
    # None | "timeout" (never answers) | "drop" (the stream breaks) | "stall" (the stream
    # goes silent: no more items, no error, no end)
    fail: str | None = None
    fail_after: int = 0      # items delivered before a "drop" or a "stall"
    seed: int = 0


class _Waits:
    def __init__(self, latency: Latency, clock: Clock | None) -> None:
        self.latency = latency
        self.clock = clock or Clock()
        self._rng = random.Random(latency.seed)

    async def wait(self, base: float) -> None:
        extra = self._rng.uniform(0.0, self.latency.jitter_s) if self.latency.jitter_s else 0.0
        if base + extra > 0:
            await self.clock.sleep(base + extra)

    async def hang_if_asked(self) -> None:
        if self.latency.fail == "timeout":
            await self.clock.sleep(math.inf)

    async def stall_if_asked(self, delivered: int) -> None:
        if self.latency.fail == "stall" and delivered >= self.latency.fail_after:
            await self.clock.sleep(math.inf)

    def drop_if_asked(self, delivered: int) -> None:
        if self.latency.fail == "drop" and delivered >= self.latency.fail_after:
            raise ConnectionResetError("fake provider dropped the stream")


class _EnergyStream(VADStream):
    window = 320  # 20 ms at 16 kHz

    def __init__(self, threshold_dbfs: float, onset_windows: int) -> None:
        super().__init__()
        self.threshold_dbfs = threshold_dbfs
        self.onset_windows = onset_windows
        self._loud = 0  # loud windows in a row
        self._decided = 0  # self.windows at the last call (silent windows skip the call)

    def _probability(self, window: PCM) -> float:
        run = self._loud if self.windows == self._decided + 1 else 0
        self._decided = self.windows
        self._loud = run + 1 if rms_dbfs(window) > self.threshold_dbfs else 0
        return 1.0 if self._loud > self.onset_windows else 0.0


class FakeVAD(VAD):
    """Energy detector: a 20 ms window louder than the threshold is speech, once
    ``onset_s`` of loud windows in a row have passed (a neural VAD's onset lag)."""

    name = "fake-vad"
    inline = True  # cheap enough to run on the loop; keeps virtual time exact

    def __init__(self, threshold_dbfs: float = -45.0, onset_s: float = 0.0) -> None:
        self.threshold_dbfs = threshold_dbfs
        self.onset_windows = round(onset_s * SAMPLE_RATE / _EnergyStream.window)

    def stream(self) -> VADStream:
        return _EnergyStream(self.threshold_dbfs, self.onset_windows)


class FakeSTT(STT):
    """Returns scripted transcripts in order (cycling), after ``latency.first_s``."""

    name = "fake-stt"

    def __init__(self, script: Sequence[str] | Callable[[PCM], str] = ("hello",),
                 latency: Latency = Latency(), clock: Clock | None = None) -> None:
        self.script = script
        self.calls = 0
        self._waits = _Waits(latency, clock)

    async def _transcribe(self, audio: PCM) -> str:
        await self._waits.hang_if_asked()
        await self._waits.wait(self._waits.latency.first_s)
        await self._waits.stall_if_asked(0)
        self._waits.drop_if_asked(0)
        self.calls += 1
        if callable(self.script):
            return self.script(audio)
        return self.script[(self.calls - 1) % len(self.script)]

    async def warm(self) -> None:
        return None


class FakeLLM(LLM):
    """Streams a scripted reply word by word: first token after ``first_s``, then one
    token every ``per_item_s``. Records the messages of every request (``requests``) and
    of every prefill (``prefills``), as a provider receives them: redacted.

    A reply may be a list of text and :class:`ToolCall` items: the calls are yielded
    whole, in their place, when the request offers tools (the names offered are kept in
    ``offered``); a request without tools gets only the text."""

    name = "fake-llm"

    def __init__(self, replies: Sequence[Scripted]
                 | Callable[[list[ChatMessage]], Scripted] = ("Hi.",),
                 latency: Latency = Latency(), clock: Clock | None = None, *,
                 turn_end: Callable[[str], float | None] | None = None,
                 turn_end_s: float = 0.0) -> None:
        self.replies = replies
        self.requests: list[list[ChatMessage]] = []
        self.offered: list[tuple[str, ...]] = []  # tool names offered, per request
        self.prefills: list[list[ChatMessage]] = []
        #: ``turn_end_p``: P(turn end) for the caller's last words, answered after
        #: ``turn_end_s``; None: the model cannot tell. Every question is kept in ``turn_ends``.
        self.turn_end = turn_end
        self.turn_end_s = turn_end_s
        self.turn_ends: list[list[ChatMessage]] = []
        self.cancelled = 0
        self.tokens_sent = 0
        self._waits = _Waits(latency, clock)

    async def _stream(self, messages: list[ChatMessage],
                      tools: Sequence[Tool] = ()) -> AsyncIterator[str | ToolCall]:
        self.requests.append(list(messages))
        self.offered.append(tuple(t.name for t in tools))
        if callable(self.replies):
            script = self.replies(messages)
        else:
            script = self.replies[(len(self.requests) - 1) % len(self.replies)]
        words: list[str | ToolCall] = []
        if isinstance(script, str):
            words.extend(script.split(" "))
        for part in () if isinstance(script, str) else script:
            if isinstance(part, ToolCall):
                if tools:
                    words.append(part)
            elif part:
                words.extend(w for w in part.split(" ") if w)
        finished = False
        try:
            await self._waits.hang_if_asked()
            await self._waits.wait(self._waits.latency.first_s)
            for i, word in enumerate(words):
                if i:
                    await self._waits.wait(self._waits.latency.per_item_s)
                await self._waits.stall_if_asked(i)
                self._waits.drop_if_asked(i)
                self.tokens_sent += 1
                yield word if i == 0 or isinstance(word, ToolCall) else " " + word
            finished = True
        finally:
            if not finished:
                self.cancelled += 1

    async def warm(self, messages: list[ChatMessage]) -> None:
        return None

    async def _prefill(self, messages: list[ChatMessage]) -> None:
        self.prefills.append(list(messages))

    async def _turn_end_p(self, messages: list[ChatMessage]) -> float | None:
        if self.turn_end is None:
            return None
        self.turn_ends.append(list(messages))
        await self._waits.wait(self.turn_end_s)
        return self.turn_end(messages[-1].content)


class FakeTTS(TTS):
    """Speaks a 440 Hz tone, ``seconds_per_word`` long per word, in ``chunk_s`` chunks.
    First chunk after ``latency.first_s``; each later chunk after ``chunk_s * rtf``."""

    name = "fake-tts"

    def __init__(self, latency: Latency = Latency(), rtf: float = 0.0,
                 seconds_per_word: float = 0.25, chunk_s: float = 0.1,
                 sample_rate: int = 16_000, clock: Clock | None = None) -> None:
        self.sample_rate = sample_rate
        self.rtf = rtf
        self.seconds_per_word = seconds_per_word
        self.chunk_s = chunk_s
        self.spoken: list[str] = []
        self._waits = _Waits(latency, clock)

    def duration(self, text: str) -> float:
        return self.seconds_per_word * len(text.split())

    async def _synthesize(self, text: str) -> AsyncIterator[PCM]:
        await self._waits.hang_if_asked()
        self.spoken.append(text)
        total = round(self.duration(text) * self.sample_rate)
        step = round(self.chunk_s * self.sample_rate)
        t = np.arange(total) / self.sample_rate
        audio = (0.3 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)
        await self._waits.wait(self._waits.latency.first_s)
        for i, start in enumerate(range(0, total, step)):
            if i:
                await self._waits.wait(self.chunk_s * self.rtf)
            await self._waits.stall_if_asked(i)
            self._waits.drop_if_asked(i)
            yield audio[start:start + step]

    async def warm(self) -> None:
        return None


class FakeTurnModel(TurnModel):
    """P(turn complete) from a function of the turn's audio (or a constant), after
    ``latency.first_s``. Records the length in samples of every audio it was asked about."""

    name = "fake-turn-model"

    def __init__(self, probability: float | Callable[[PCM], float] = 1.0,
                 latency: Latency = Latency(), clock: Clock | None = None) -> None:
        self._p = probability
        self.asked: list[int] = []
        self._waits = _Waits(latency, clock)

    async def _probability(self, audio: PCM) -> float:
        await self._waits.hang_if_asked()
        self.asked.append(len(audio))
        await self._waits.wait(self._waits.latency.first_s)
        await self._waits.stall_if_asked(0)
        self._waits.drop_if_asked(0)
        return self._p(audio) if callable(self._p) else self._p


def fake_stack(*, stt: STT | None = None, llm: LLM | None = None, tts: TTS | None = None,
               vad: VAD | None = None, turn: TurnModel | None = None) -> Stack:
    return Stack(vad=vad or FakeVAD(), stt=stt or FakeSTT(), llm=llm or FakeLLM(),
                 tts=tts or FakeTTS(), turn=turn)
