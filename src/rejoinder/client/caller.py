"""A caller program: real WebRTC to the server, a WAV as its microphone, a recorder as its ear.

It connects exactly like the web page does (offer over ``POST /api/offer``, Opus
audio, an ``events`` data channel), plays the WAV in real time, records what comes
back with arrival times, and measures each turn's voice-to-voice latency from the
audio (see :mod:`rejoinder.client.measure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from rejoinder.client.connection import CallFailed, Connection, Mic
from rejoinder.client.measure import Received, Utterance, find_utterances, onset_after
from rejoinder.core.audio import OUT_RATE, PCM, SAMPLE_RATE, resample
from rejoinder.core.clock import Clock
from rejoinder.core.tasks import cancel_all

log = logging.getLogger(__name__)

# How the caller notices a server that went away: GET /api/health every second; two
# misses in a row (a refused connection misses at once) end the call, 1-3 s after.
HEALTH_INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 2.0
HEALTH_MISSES = 2

__all__ = ["CallFailed", "CallResult", "TurnResult", "place_call"]


@dataclass
class TurnResult:
    index: int
    eos: float                       # caller clock
    v2v_ms: float | None             # None: no reply before the next utterance
    server: dict[str, Any] | None    # the server's turn record joined to this utterance
    user_text: str = ""
    agent_text: str = ""

    @property
    def turn(self) -> int | None:
        """The server's number for this turn (as in its events and /api/calls; a greeting
        is turn 1), None when no server turn was joined to the utterance; ``index`` counts
        the WAV's utterances."""
        value = (self.server or {}).get("turn")
        return value if isinstance(value, int) else None


@dataclass
class CallResult:
    call_id: str
    turns: list[TurnResult]
    received: Received
    events: list[dict[str, Any]] = field(default_factory=list)

    def latencies(self) -> list[float]:
        return [t.v2v_ms for t in self.turns if t.v2v_ms is not None]


async def place_call(url: str, pcm16k: PCM, *, lead_s: float = 1.0, tail_s: float = 20.0,
                     min_gap_s: float = 0.7, jitter_frames: int = 0,
                     on_event: Callable[[dict[str, Any]], None] | None = None,
                     on_status: Callable[[str], None] | None = None) -> CallResult:
    """Call the server at ``url`` and play ``pcm16k``; return per-turn measurements.

    ``jitter_frames``: the caller's own jitter buffer (20 ms frames). The default 0
    timestamps agent audio as it *arrives* (design.md's definition); a positive value
    adds the playout delay a buffering client would have. ``on_status``: told, in words,
    when the call is connected and when each utterance has been sent.

    After the WAV ends, waits until the server has reported as many turns as the WAV
    has utterances (or ``tail_s`` seconds), plus time for the last reply to play.

    Raises :class:`CallFailed` within a few seconds if the server goes away mid-call (see
    :func:`watch_server`): the agent is silent between replies, so silence alone says
    nothing, and playing the rest of the WAV into a dead connection would end in a
    report of unanswered turns instead of the truth.
    """
    clock = Clock()
    utterances = find_utterances(pcm16k, SAMPLE_RATE, min_gap_s=min_gap_s)
    if not utterances:
        raise CallFailed("the WAV has no speech louder than -40 dBFS")
    mic = Mic(clock)
    lead = np.zeros(round(lead_s * OUT_RATE), dtype=np.int16)
    first = mic.play(np.concatenate((lead, resample(pcm16k, SAMPLE_RATE, OUT_RATE))))
    conn = Connection(mic, jitter_frames=jitter_frames, on_event=on_event)

    def time_of(offset_s: float) -> float | None:
        return mic.time_of(first + round((offset_s + lead_s) * OUT_RATE))

    announcer: asyncio.Task[None] | None = None
    try:
        await conn.open(url)
        if on_status is not None:
            on_status(f"connected: call {conn.call_id}, {len(utterances)} utterance(s) to send")
            announcer = asyncio.create_task(
                _announce_sent(utterances, time_of, on_status, clock), name="sent")
        async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT_S)) as http:
            await _unless_lost(_converse(conn, mic, len(utterances), tail_s, clock),
                               watch_server(lambda: _answers(http, url), conn.lost))
    finally:
        if announcer is not None:
            await cancel_all({announcer})
        await conn.close()

    return _results(conn.call_id, utterances, time_of, conn.received, conn.events,
                    conn.wall_offset)


async def _announce_sent(utterances: list[Utterance],
                         time_of: Callable[[float], float | None],
                         on_status: Callable[[str], None], clock: Clock) -> None:
    """Tell ``on_status`` as each utterance's last sample has been sent."""
    for i, u in enumerate(utterances, 1):
        while time_of(u.end_s) is None:
            await clock.sleep(0.05)
        on_status(f"sent utterance {i}/{len(utterances)} "
                  f"({u.start_s:.1f}-{u.end_s:.1f} s of the WAV)")


async def _converse(conn: Connection, mic: Mic, utterances: int, tail_s: float,
                    clock: Clock) -> None:
    await mic.idle.wait()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(tail_s):
            while len(conn.traces()) < utterances:
                conn.event_arrived.clear()
                await conn.event_arrived.wait()
    # Let the last reply finish playing: wait for 1.5 s of received silence.
    await _until_quiet(conn.received, clock, quiet_s=1.5, limit_s=tail_s)


async def watch_server(answers: Callable[[], Awaitable[bool]], lost: asyncio.Event, *,
                       interval_s: float = HEALTH_INTERVAL_S,
                       misses: int = HEALTH_MISSES) -> str:
    """Return, with the reason, once the server is gone: ``lost`` is set (the peer
    connection failed or the server closed it) or ``answers()`` (is the server still
    there?) is false ``misses`` times in a row, asked every ``interval_s`` seconds.

    Both are needed: a server process that dies sends no goodbye, and WebRTC takes about
    30 s to declare the peer gone (ICE consent); the HTTP port answers at once."""
    missed = 0
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await lost.wait()
        if lost.is_set():
            return "the server closed the call or the connection failed"
        if await answers():
            missed = 0
            continue
        missed += 1
        if missed >= misses:
            return f"the server stopped answering ({missed} checks {interval_s:g} s apart)"


async def _unless_lost(call: Coroutine[Any, Any, None], watch: Coroutine[Any, Any, str]) -> None:
    """Run ``call`` while ``watch`` watches the server; raise CallFailed if it is lost."""
    talking = asyncio.create_task(call, name="caller")
    watching = asyncio.create_task(watch, name="server watch")
    try:
        await asyncio.wait((talking, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_all((talking, watching))
    if talking.done() and not talking.cancelled():
        talking.result()  # finished (or failed) on its own: its outcome stands
        return
    raise CallFailed(f"connection to the server lost: {watching.result()}")


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    """Whether the server answers ``GET /api/health`` (any answer below 500: the process
    is there; a refused connection, a timeout or a proxy's 502 say it is not)."""
    try:
        async with http.get(url.rstrip("/") + "/api/health") as resp:
            return resp.status < 500
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _until_quiet(received: Received, clock: Clock, quiet_s: float, limit_s: float) -> None:
    deadline = clock.now() + limit_s
    while clock.now() < deadline:
        loud = received.loud_times()
        last = float(loud[-1]) if loud.size else -math.inf
        if clock.now() - last >= quiet_s:
            return
        await clock.sleep(0.1)


def _results(call_id: str, utterances: list[Utterance],
             time_of: Callable[[float], float | None], received: Received,
             events: list[dict[str, Any]], offset: float) -> CallResult:
    """Join what was played, what was heard and what the server reported.

    Server turns are matched to utterances by end-of-speech time (both clocks are
    wall clocks here: caller and server on one host, or NTP-synced hosts).
    """
    loud = received.loud_times()
    traces = [e for e in events if e.get("type") == "trace"]
    turns: list[TurnResult] = []
    for i, u in enumerate(utterances):
        eos = time_of(u.end_s)
        if eos is None:
            continue
        nxt = time_of(utterances[i + 1].start_s) if i + 1 < len(utterances) else None
        onset = onset_after(loud, eos, until=nxt if nxt is not None else math.inf)
        server = _nearest_trace(traces, eos + offset)
        turn = server.get("turn") if server else None
        turns.append(TurnResult(
            index=i + 1, eos=eos,
            v2v_ms=None if onset is None else round((onset - eos) * 1000.0, 1),
            server=server,
            user_text=" ".join(str(e["text"]) for e in events
                               if e.get("type") == "user" and e.get("turn") == turn),
            agent_text=" ".join(str(e["text"]) for e in events
                                if e.get("type") == "agent" and e.get("turn") == turn),
        ))
    return CallResult(call_id, turns, received, events)


def _nearest_trace(traces: list[dict[str, Any]], eos_wall: float) -> dict[str, Any] | None:
    best, best_d = None, 1.0
    for t in traces:
        wall = t.get("speech_end_wall")
        if isinstance(wall, (int, float)) and abs(wall - eos_wall) < best_d:
            best, best_d = t, abs(wall - eos_wall)
    return best
