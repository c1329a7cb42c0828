"""A simulated caller: plays a script over real WebRTC (or a simulated Twilio phone line),
reacting to what it hears.

The caller waits for the agent like a person would (speaks again ``gap_s`` after the
reply ended, or interrupts ``interrupt_after_s`` after the reply began), records
when each of its samples was spoken and when each agent sample arrived, and leaves
the arithmetic to :mod:`rejoinder.bench.measure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rejoinder.bench.scripts import Script, Turn
from rejoinder.client.connection import Connection, Mic, encode_frames
from rejoinder.client.measure import find_utterances
from rejoinder.client.phone_stages import fetch_phone_traces
from rejoinder.client.twilio import PHONE_RATE, PhoneCall, PhoneMic
from rejoinder.core.audio import OUT_RATE, PCM, SAMPLE_RATE, resample
from rejoinder.core.clock import Clock

LOUD = 500          # agent sample magnitude that counts as sound (of 32768)
BURST_GAP_S = 0.15  # quiet that separates two bursts of agent audio
POLL_S = 0.02


@dataclass
class SpokenTurn:
    index: int
    start: float        # caller clock: first speech sample
    eos: float          # caller clock: last speech sample (end of speech)
    interrupt: bool     # scripted to talk over the agent
    pause_at: float | None = None  # caller clock: start of a spliced mid-sentence pause
    backchannel: bool = False      # a listening noise over the agent: no reply expected
    say: str = ""                  # the script's source of the words ("librivox:0880")


@dataclass
class CallRecord:
    """Everything one simulated call observed; see :func:`measure.turns_of`."""

    call_id: str
    turns: list[SpokenTurn]
    loud: np.ndarray                 # arrival times of loud agent samples, ascending
    traces: list[dict[str, Any]]     # the server's turn records (events channel)
    wall_offset: float               # caller wall clock minus caller monotonic clock
    events: list[dict[str, Any]] = field(default_factory=list)


class _Ear:
    """Follows the agent audio as it arrives: burst starts and the last loud sample."""

    def __init__(self, conn: Connection | PhoneCall) -> None:
        self.conn = conn
        self.bursts: list[float] = []
        self.last_loud = -math.inf
        self._seen = 0

    def update(self) -> None:
        r = self.conn.received
        while self._seen < len(r.chunks):
            t, chunk = r.times[self._seen], r.chunks[self._seen]
            self._seen += 1
            idx = np.flatnonzero(np.abs(chunk.astype(np.int32)) >= LOUD)
            if not idx.size:
                continue
            first = t + idx[0] / r.rate
            if first - self.last_loud > BURST_GAP_S:
                self.bursts.append(first)
            self.last_loud = t + idx[-1] / r.rate

    def burst_after(self, t: float) -> float | None:
        return next((b for b in self.bursts if b > t), None)


async def run_call(url: str, script: Script, *, reply_timeout_s: float = 15.0,
                   clock: Clock | None = None, transport: str = "webrtc",
                   auth_token: str | None = None) -> CallRecord:
    """Place one call and play ``script``; raises CallFailed if refused or unreachable.

    ``transport``: "webrtc" (like the web page) or "twilio" (a phone call through the
    server's Twilio webhook and media stream, signed with ``auth_token``; what counts
    as heard is what the phone played).
    """
    clock = clock or Clock()
    mic: Mic | PhoneMic
    conn: Connection | PhoneCall
    if transport == "twilio":
        mic = PhoneMic(clock)
        conn, rate = PhoneCall(mic, auth_token=auth_token), PHONE_RATE
    else:
        mic = Mic(clock)
        conn, rate = Connection(mic), OUT_RATE
    ear = _Ear(conn)
    spoken: list[tuple[int, int, int, int | None]] = []  # (turn, start, eos, pause)
    opened_wall = clock.wall()
    await conn.open(url)
    try:
        await clock.sleep(script.lead_s)
        prev_eos: float | None = None
        for i, turn in enumerate(script.turns):
            if prev_eos is not None:
                await _wait_for_cue(ear, clock, prev_eos, turn.gap_s, turn.interrupt_after_s,
                                    reply_timeout_s)
            if isinstance(mic, Mic):
                pcm, packets = _prepared(turn)
                first = mic.play(pcm, packets)
            else:
                pcm = resample(turn.audio, SAMPLE_RATE, rate)
                first = mic.play(pcm)
            found = find_utterances(turn.audio, SAMPLE_RATE, min_gap_s=10.0)
            start_off = round(found[0].start_s * rate) if found else 0
            end_off = round(found[-1].end_s * rate) if found else len(pcm)
            pause = None if turn.pause_at_s is None else first + round(turn.pause_at_s * rate)
            spoken.append((i + 1, first + start_off, first + end_off, pause))
            # The mic plays in real time; if the connection stalls it never finishes.
            async with asyncio.timeout(len(turn.audio) / SAMPLE_RATE + 10.0):
                await mic.idle.wait()
            prev_eos = mic.time_of(first + end_off - 1) or clock.now()
        # The last reply: wait for it to start and end, then for the server's record.
        assert prev_eos is not None
        await _wait_for_cue(ear, clock, prev_eos, 1.0, None, reply_timeout_s)
        with contextlib.suppress(TimeoutError):
            # A phone call has no events channel: no server records to wait for.
            async with asyncio.timeout(3.0 if transport == "webrtc" else 0.0):
                while len(conn.traces()) < sum(not t.backchannel for t in script.turns):
                    conn.event_arrived.clear()
                    await conn.event_arrived.wait()
    finally:
        await conn.close()
    traces = conn.traces()
    if transport == "twilio":  # no events channel: the server's stages from its call store
        traces = await fetch_phone_traces(url, conn.call_id, opened_wall,
                                          sum(not t.backchannel for t in script.turns))
    turns = []
    for (index, s, e, pause), turn in zip(spoken, script.turns, strict=False):
        start_t, eos_t = mic.time_of(s), mic.time_of(e - 1)
        assert start_t is not None and eos_t is not None
        turns.append(SpokenTurn(index, start_t, eos_t + 1.0 / rate,
                                turn.interrupt_after_s is not None,
                                None if pause is None else mic.time_of(pause),
                                turn.backchannel, turn.say))
    return CallRecord(conn.call_id, turns, conn.received.loud_times(LOUD), traces,
                      conn.wall_offset, conn.events)


# A turn's audio at 48 kHz and its Opus packets, made once per process: every call of a
# benchmark says the same turns, and encoding them was a third of the callers' CPU.
_PREPARED: dict[int, tuple[Turn, PCM, list[bytes]]] = {}


def _prepared(turn: Turn) -> tuple[PCM, list[bytes]]:
    entry = _PREPARED.get(id(turn))
    if entry is None or entry[0] is not turn:  # the turn is kept: its id stays its own
        pcm = resample(turn.audio, SAMPLE_RATE, OUT_RATE)
        entry = _PREPARED[id(turn)] = (turn, pcm, encode_frames(pcm))
    return entry[1], entry[2]


async def _wait_for_cue(ear: _Ear, clock: Clock, prev_eos: float, gap_s: float,
                        interrupt_after_s: float | None, timeout_s: float) -> None:
    """Until it is this turn's moment to speak (or the agent never answered)."""
    deadline = prev_eos + timeout_s
    while clock.now() < deadline:
        ear.update()
        onset = ear.burst_after(prev_eos)
        if onset is not None:
            if interrupt_after_s is not None:
                await clock.sleep(max(0.0, onset + interrupt_after_s - clock.now()))
                return
            if clock.now() - ear.last_loud >= gap_s:
                return
        await clock.sleep(POLL_S)
