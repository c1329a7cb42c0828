"""A hold over a phone line (the caller makes a sound over the agent): Twilio stops playing
at once, as a WebRTC caller's audio does, and a released hold goes on from where the
caller stopped hearing. The server's transport and the simulated Twilio caller talk over
an in-memory socket on virtual time; one send stalls, as on a loaded server, so that
Twilio holds a backlog of audio when the hold comes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np

from rejoinder.client.twilio import PhoneCall, PhoneMic, StreamAnswer
from rejoinder.core.audio import PCM
from rejoinder.core.clock import Clock
from rejoinder.core.telephony import ulaw_decode
from rejoinder.testing.virtual_time import run_virtual
from rejoinder.transports.twilio import REWIND_MARGIN_S, TwilioTransport
from rejoinder.turn.playout import Playout

RATE = 8000
FRAME = 160


class _ServerSocket:
    """What TwilioTransport uses of aiohttp's WebSocketResponse. ``stall`` makes one
    send take that long (the sender then catches up: Twilio buffers the backlog)."""

    def __init__(self, inbox: asyncio.Queue[str | None], outbox: asyncio.Queue[str | None]
                 ) -> None:
        self.inbox, self.outbox = inbox, outbox
        self.closed = False
        self.stall_at: int | None = None
        self.stall_s = 0.0
        self.sent = 0

    async def send_str(self, data: str) -> None:
        self.sent += 1
        if self.sent == self.stall_at:
            await asyncio.sleep(self.stall_s)
        await self.outbox.put(data)

    def __aiter__(self) -> AsyncIterator[aiohttp.WSMessage]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[aiohttp.WSMessage]:
        while (data := await self.inbox.get()) is not None:
            yield aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, data, None)

    def exception(self) -> BaseException | None:
        return None

    async def close(self, **_: Any) -> bool:
        self.closed = True
        await self.outbox.put(None)
        return True


class _CallerSocket:
    def __init__(self, inbox: asyncio.Queue[str | None], outbox: asyncio.Queue[str | None]
                 ) -> None:
        self.inbox, self.outbox = inbox, outbox

    async def send_str(self, data: str) -> None:
        await self.outbox.put(data)

    async def receive(self) -> aiohttp.WSMessage:
        data = await self.inbox.get()
        if data is None:
            return aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None)
        return aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, data, None)

    async def close(self) -> bool:
        await self.outbox.put(None)
        return True


class _Side:
    """The call's side of the contract: the caller's frames are drained and dropped."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[None]] = []

    def on_connected(self) -> None: ...
    def on_frame(self) -> None: ...
    def on_caller_message(self, message: object) -> None: ...
    def on_caller_event(self, event: dict[str, object]) -> None: ...
    def on_lost(self) -> None: ...

    def on_media(self, frames: AsyncIterator[PCM]) -> None:
        async def drain() -> None:
            async for _ in frames:
                pass
        self.tasks.append(asyncio.create_task(drain()))


_LEVELS = sorted({int(v) for v in ulaw_decode(bytes(range(256))) if v >= 1000})[:10]


def _ramp(seconds: float) -> PCM:
    """Loud audio whose every frame is different, after mu-law too: frame k starts with
    the levels numbered k // 10 and k % 10 (see :func:`_frame_number`)."""
    frames = round(seconds * RATE) // FRAME
    pcm = np.full((frames, FRAME), 4000, dtype=np.int16)
    pcm[:, 0] = [_LEVELS[k // 10] for k in range(frames)]
    pcm[:, 1] = [_LEVELS[k % 10] for k in range(frames)]
    return pcm.reshape(-1)


def _frame_number(chunk: PCM) -> int | None:
    if len(chunk) < 2 or chunk[0] not in _LEVELS or chunk[1] not in _LEVELS:
        return None
    return _LEVELS.index(int(chunk[0])) * 10 + _LEVELS.index(int(chunk[1]))


async def _call(stall_s: float, hold_at: float, release_at: float | None,
                *, hold: bool = True) -> tuple[PhoneCall, Playout, float]:
    """A reply of 2 s of audio sent to the simulated caller; the 11th send stalls
    ``stall_s``; the playout is held at ``hold_at`` (and released at ``release_at``)."""
    clock = Clock()
    up: asyncio.Queue[str | None] = asyncio.Queue()
    down: asyncio.Queue[str | None] = asyncio.Queue()
    server_ws = _ServerSocket(up, down)
    transport = TwilioTransport(server_ws, lambda start: True, clock)  # type: ignore[arg-type]
    playout = Playout(RATE, confirmed=True)
    side = _Side()
    transport.start(side, playout)
    serving = asyncio.create_task(transport.serve())
    call = PhoneCall(PhoneMic(clock))
    await call.attach(_CallerSocket(down, up), StreamAnswer("ws://test/twilio/media", {}))
    await asyncio.sleep(0.01)  # connected and start are read
    assert transport.start_info is not None
    t0 = clock.now()
    server_ws.stall_at, server_ws.stall_s = server_ws.sent + 11, stall_s
    index = playout.begin_clause(1, "one two three four five six seven eight")
    playout.push(1, index, _ramp(2.0))
    playout.end_clause(1, index)
    await asyncio.sleep(hold_at - (clock.now() - t0))
    held_at = clock.now()
    if hold:
        playout.hold("caller")
    if release_at is not None:
        await asyncio.sleep(release_at - hold_at)
        playout.release("caller")
    await asyncio.sleep(3.0)
    await call.close()
    await transport.close()
    serving.cancel()
    for task in side.tasks:
        task.cancel()
    return call, playout, held_at


def _heard_after(call: PhoneCall, t: float) -> float:
    """Seconds of agent audio the caller heard that started after ``t``... up to the end
    of the first stretch of it (the audio that kept playing)."""
    r = call.received
    out = 0.0
    for start, chunk in zip(r.times, r.chunks, strict=True):
        end = start + len(chunk) / RATE
        if end > t + 1e-9 and start < t + 1.0:
            out = max(out, end - t)
    return out


def test_a_hold_stops_twilio_within_a_frame_even_with_a_backlog() -> None:
    # A 120 ms stall: the sender catches up, Twilio then holds ~120 ms more than a frame.
    call, _, held_at = run_virtual(_call(0.12, hold_at=0.6, release_at=None))
    assert call.protocol_errors == []
    # Without the clear at the hold the caller heard the backlog: ~140 ms after the hold.
    assert _heard_after(call, held_at) <= 0.02 + 1e-6


def test_without_a_hold_the_backlog_plays_on() -> None:
    # The same call without a hold: the caller's ear is as the test above assumes.
    call, _, t = run_virtual(_call(0.12, hold_at=0.6, release_at=None, hold=False))
    assert _heard_after(call, t) > 0.12


def test_a_released_hold_goes_on_from_where_the_caller_stopped_hearing() -> None:
    call, playout, held_at = run_virtual(_call(0.12, hold_at=0.6, release_at=0.9))
    assert call.protocol_errors == []
    numbers = [n for c in call.received.chunks if (n := _frame_number(c)) is not None]
    # Every frame of the reply was heard (the cleared backlog was sent again)...
    assert set(numbers) == set(range(100))
    # ...in order, at most the margin's worth (one frame) heard twice, at the hold.
    repeats = len(numbers) - len(set(numbers))
    assert numbers == sorted(numbers)
    assert repeats <= round(REWIND_MARGIN_S * RATE / FRAME)
    assert playout.heard(1) == "one two three four five six seven eight"


def test_rewind_puts_pulled_audio_back_in_order_and_counts_it_unheard() -> None:
    starts: list[int] = []
    playout = Playout(RATE, lambda turn, clause, text: starts.append(clause), confirmed=True)
    first = playout.begin_clause(1, "one two")
    playout.push(1, first, _ramp(0.1)[:800])           # frames 0-4
    playout.end_clause(1, first)
    second = playout.begin_clause(1, "three four")
    playout.push(1, second, _ramp(0.2)[800:1600])      # frames 5-9
    playout.end_clause(1, second)
    pulled = [playout.pull() for _ in range(7)]
    assert playout.pulled == 7 * FRAME
    playout.confirm(7 * FRAME)
    assert playout.rewind(3 * FRAME + 80) == 3 * FRAME + 80  # back into frame 3
    assert playout.pulled == 3 * FRAME + 80
    assert playout.heard(1) == "one"  # confirmed is never beyond what is pulled
    again = np.concatenate([playout.pull() for _ in range(4)])  # type: ignore[misc]
    assert np.array_equal(again[:80], pulled[3][80:])  # type: ignore[index]
    assert np.array_equal(again[80:80 + 3 * FRAME], np.concatenate(pulled[4:7]))  # type: ignore[arg-type]
    assert starts == [0, 1]  # a clause is announced once, however often it is pulled
    playout.flush()
    assert playout.rewind(FRAME) == 0  # nothing from before a flush
