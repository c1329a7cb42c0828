"""A caller and an ear joined straight to a Conversation, without a network.

``speak`` plays a script of speech and silence as 20 ms frames in real (or
virtual) time; ``Ear`` pulls agent audio every 20 ms like a transport would and
remembers when each loud frame arrived. Used by the virtual-time tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rejoinder.core.audio import FRAME_SAMPLES, PCM, SAMPLE_RATE
from rejoinder.core.clock import Clock
from rejoinder.turn.playout import Playout

if TYPE_CHECKING:
    from rejoinder.providers.base import Stack
    from rejoinder.turn.engine import Conversation
    from rejoinder.turn.options import TurnOptions

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
Segment = tuple[str, float] | tuple[str, float, float]  # (kind, seconds[, level dBFS])


def tone(seconds: float, freq: float = 220.0, amplitude: float = 0.2) -> PCM:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def script_audio(script: Sequence[Segment]) -> PCM:
    """``[("speech", 1.0), ("silence", 0.5), ...]`` as one buffer.

    Speech is a tone at -17 dBFS, silence is zeros; a third element sets either one's
    level in dBFS instead (a tone): ``("speech", 0.1, -43)``, ``("silence", 1.0, -33)``.
    """
    parts = []
    for kind, seconds, *level in script:
        if level:
            parts.append(tone(seconds, amplitude=np.sqrt(2) * 10 ** (level[0] / 20)))
        elif kind == "speech":
            parts.append(tone(seconds))
        else:
            parts.append(np.zeros(round(seconds * SAMPLE_RATE), np.int16))
    return np.concatenate(parts)


async def speak(audio: PCM, clock: Clock | None = None) -> AsyncIterator[PCM]:
    """Yield 20 ms frames; frame k (0-based) is delivered at (k + 1) * 20 ms."""
    clock = clock or Clock()
    start = clock.now()
    for k, i in enumerate(range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES)):
        target = start + (k + 1) * FRAME_S
        delay = target - clock.now()
        if delay > 0:
            await clock.sleep(delay)
        yield audio[i:i + FRAME_SAMPLES]


@dataclass
class Ear:
    """Pulls the playout every 20 ms (offset by ``phase`` seconds, so pulls never tie
    with the caller's frames) and records when loud frames arrived."""

    playout: Playout
    clock: Clock = field(default_factory=Clock)
    phase: float = 0.005
    loud_times: list[float] = field(default_factory=list)

    async def run(self) -> None:
        start = self.clock.now() + self.phase - FRAME_S
        k = 0
        while True:
            k += 1
            delay = start + k * FRAME_S - self.clock.now()
            if delay > 0:
                await self.clock.sleep(delay)
            frame = self.playout.pull()
            if frame is not None and np.abs(frame).max() > 300:
                self.loud_times.append(self.clock.now())

    def first_loud_after(self, t: float) -> float | None:
        return next((x for x in self.loud_times if x > t), None)

    def last_loud_before(self, t: float) -> float | None:
        return next((x for x in reversed(self.loud_times) if x < t), None)


async def converse(
    stack: Stack, script: Sequence[Segment], *, options: TurnOptions | None = None,
    extra_s: float = 5.0, **kwargs: object,
) -> tuple[Conversation, Ear, list[dict[str, object]]]:
    """Play ``script`` (then ``extra_s`` of silence) to a new Conversation on ``stack``,
    with an :class:`Ear` listening; returns the conversation, the ear and its events."""
    from rejoinder.turn.engine import Conversation

    clock = Clock()
    events: list[dict[str, object]] = []
    conv = Conversation(stack, "Be brief.", options=options, events=events.append,
                        clock=clock, call_id="t", **kwargs)  # type: ignore[arg-type]
    ear = Ear(conv.playout, clock)
    ear_task = asyncio.create_task(ear.run())
    await conv.run(speak(script_audio([*script, ("silence", extra_s)]), clock))
    ear_task.cancel()
    return conv, ear, events
