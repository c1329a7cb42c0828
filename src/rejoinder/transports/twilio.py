"""Twilio Media Streams, bidirectional: a phone call over one WebSocket (Twilio's documented
protocol, "Media Streams - WebSocket Messages").

From Twilio: ``connected``, ``start`` (streamSid, callSid, mediaFormat, customParameters),
``media`` (base64 mu-law, 8 kHz, 20 ms), ``dtmf``, ``mark`` (one of ours, echoed once the
audio sent before it has played) and ``stop``. To Twilio: ``media`` paced in real time,
one 20 ms frame every 20 ms on the clock (Twilio would buffer anything faster, and the
caller would hear a barge-in late), a ``mark`` after each clause and every
:data:`MARK_EVERY_FRAMES` frames of a long one, and ``clear`` when the agent is
interrupted. What the caller heard is what the marks confirmed (``Playout.confirm``).

Bad input (malformed JSON, unknown events, bad base64, a wrong payload length, messages
going backwards) is dropped and counted, and logged at the 1st, 10th, 100th, ... of each
kind; it never ends the call. A socket that drops ends the caller's audio, so the call ends
with its completed turns recorded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from rejoinder.core.audio import PCM
from rejoinder.core.clock import Clock
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.core.telephony import PHONE_FRAME_BYTES, PHONE_RATE, PhoneDecoder, PhoneEncoder
from rejoinder.transports.base import CallSide
from rejoinder.turn.playout import Playout

log = logging.getLogger(__name__)

MARK_EVERY_FRAMES = 25  # 0.5 s: a clause cut midway counts what was confirmed of it
# Given back to the playout beyond what Twilio had not yet played when a hold clears it: the
# audio travels to Twilio for a while (one frame, over a good link) before it plays.
REWIND_MARGIN_S = 0.02
INBOUND_FRAMES_MAX = 250  # 5 s of caller audio waiting for the conversation; beyond, dropped
DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")
_LOGGED_AT = (1, 10, 100, 1000, 10000)


@dataclass(frozen=True)
class StreamStart:
    """What Twilio's ``start`` message says about the stream."""

    stream_sid: str
    call_sid: str
    parameters: dict[str, str]  # the TwiML's <Parameter>s (customParameters)


class TwilioTransport:
    """One Media Stream (:class:`~rejoinder.transports.base.Transport`).

    ``accept`` judges the ``start`` message (the one-time token); refused, the stream is
    closed. :meth:`serve` reads the socket until the stream ends.
    """

    kind = "twilio"
    rate = PHONE_RATE
    confirms_heard = True  # Twilio buffers what it was sent: heard is what marks confirm

    def __init__(self, ws: web.WebSocketResponse, accept: Callable[[StreamStart], bool],
                 clock: Clock | None = None) -> None:
        self.ws = ws
        self.accept = accept
        self.clock = clock or Clock()
        self.start_info: StreamStart | None = None
        self.problems: Counter[str] = Counter()
        self.stopped = False  # Twilio said ``stop``: the call ended normally
        self._call: CallSide | None = None
        self._playout: Playout | None = None
        self._decoder = PhoneDecoder()
        self._encoder = PhoneEncoder(PHONE_RATE)
        self._frames: asyncio.Queue[PCM | None] = asyncio.Queue(INBOUND_FRAMES_MAX)
        self._frames_ended = False
        self._seq: int | None = None    # the last sequenceNumber taken
        self._chunk: int | None = None  # the last media chunk taken
        self._marks: dict[str, int] = {}  # mark name -> playout samples pulled when sent
        self._mark_count = 0
        self._unmarked = 0  # frames sent since the last mark
        self._sent_audio = False  # media sent since the last clear
        self._far_free = 0.0  # clock time at which Twilio will have played all it was sent
        self._audio = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._sender: asyncio.Task[None] | None = None
        self._clears: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the contract ---------------------------------------------------------------------
    def start(self, call: CallSide, playout: Playout) -> None:
        self._call, self._playout = call, playout
        playout.on_push = self._audio.set
        playout.on_flush = self._clear
        playout.on_hold = self._hold

    def send_event(self, message: str) -> None:
        """Media Streams have no event channel: events go only to the call's observers."""

    @property
    def failed(self) -> bool:
        """The stream started and ended without Twilio's ``stop`` (the socket dropped)."""
        return self.start_info is not None and not self.stopped

    async def close(self, deadline_s: float = 2.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._end_frames()
        await cancel_and_wait(self._sender, what="phone audio sender")
        for task in list(self._clears):
            await cancel_and_wait(task, what="phone clear")
        try:
            async with asyncio.timeout(deadline_s):
                await self.ws.close()
        except TimeoutError:
            log.error("media stream did not close within %.1f s", deadline_s)
        except (ConnectionError, RuntimeError) as exc:
            log.info("media stream close: %s", type(exc).__name__)

    # -- reading --------------------------------------------------------------------------
    async def serve(self) -> None:
        """Read the stream until ``stop``, a refused start, or the socket closing."""
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    if not await self._on_text(str(msg.data)):
                        return
                elif msg.type == WSMsgType.ERROR:
                    log.info("media stream error: %s", type(self.ws.exception()).__name__)
                    return
                else:
                    self._problem("a binary message")
        finally:
            if self.start_info is not None and not self.stopped:
                log.info("media stream dropped without stop")
            self._end_frames()

    async def _on_text(self, text: str) -> bool:
        """Handle one message; False when the stream is over."""
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." within the size cap
            self._problem("malformed JSON")
            return True
        event = message.get("event") if isinstance(message, dict) else None
        if event == "connected":
            return True
        if event == "start":
            started: bool = await self._on_start(message)
            return started
        if event not in ("media", "dtmf", "mark", "stop"):
            self._problem("an unknown event" if isinstance(event, str) else "not an event")
            return True
        if self.start_info is None:
            self._problem(f"{event} before start")
            return bool(event != "stop")
        sid = message.get("streamSid")
        if sid is not None and sid != self.start_info.stream_sid:
            self._problem("a message of another stream")
            return True
        if event == "stop":
            self.stopped = True
            log.info("media stream stopped by Twilio")
            return False
        if not self._in_order(message):
            return True
        if event == "media":
            self._on_media(message.get("media"))
        elif event == "dtmf":
            self._on_dtmf(message.get("dtmf"))
        else:
            self._on_mark(message.get("mark"))
        return True

    def _in_order(self, message: dict[str, Any]) -> bool:
        raw = message.get("sequenceNumber")
        if raw is None:
            return True
        seq = _integer(raw)
        if seq is None:
            self._problem("a bad sequenceNumber")
            return False
        if self._seq is not None and seq <= self._seq:
            self._problem("a message out of order")
            return False
        self._seq = seq
        return True

    async def _on_start(self, message: dict[str, Any]) -> bool:
        if self.start_info is not None:
            self._problem("a second start")
            return True
        start = _parse_start(message.get("start"))
        if start is None:
            log.warning("media stream refused: a start without a stream, a call or mu-law "
                        "8 kHz mono audio")
            await self._refuse()
            return False
        if not self.accept(start):
            await self._refuse()
            return False
        self.start_info = start
        self._seq = _integer(message.get("sequenceNumber"))
        log.info("media stream started")
        assert self._call is not None
        self._call.on_connected()
        self._call.on_media(self._caller_frames())
        self._sender = asyncio.create_task(self._send_audio(), name="phone-sender")
        return True

    async def _refuse(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=1008, message=b"stream refused")

    def _on_media(self, media: object) -> None:
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            self._problem("a media message without a payload")
            return
        if media.get("track", "inbound") != "inbound":
            return  # bidirectional streams carry the caller's track only
        try:
            payload = base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError):
            self._problem("a payload that is not base64")
            return
        if len(payload) != PHONE_FRAME_BYTES:
            self._problem("a payload that is not 20 ms of 8 kHz mu-law")
            return
        chunk = _integer(media.get("chunk"))
        if chunk is not None:
            if self._chunk is not None and chunk <= self._chunk:
                self._problem("a media chunk out of order")
                return
            self._chunk = chunk
        assert self._call is not None
        self._call.on_frame()
        if self._frames.full():
            self._problem("caller audio the conversation could not keep up with")
            return
        self._frames.put_nowait(self._decoder(payload))

    def _on_dtmf(self, dtmf: object) -> None:
        digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
        if not isinstance(digit, str) or len(digit) != 1 or digit not in DTMF_DIGITS:
            self._problem("a dtmf message without a key")
            return
        log.info("the caller pressed a key")  # which one is not logged: keys may spell a card
        assert self._call is not None
        self._call.on_caller_event({"type": "dtmf", "digit": digit.upper()})

    def _on_mark(self, mark: object) -> None:
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str) or name not in self._marks:
            return  # a mark from before a clear, or not ours: it confirms nothing
        pulled = self._marks[name]
        # Marks come back in the order they were sent: older ones are confirmed too.
        for older in list(self._marks):
            del self._marks[older]
            if older == name:
                break
        assert self._playout is not None
        self._playout.confirm(pulled)

    async def _caller_frames(self) -> AsyncIterator[PCM]:
        while (frame := await self._frames.get()) is not None:
            yield frame

    def _end_frames(self) -> None:
        if not self._frames_ended:
            self._frames_ended = True
            while self._frames.full():  # the end must get in
                self._frames.get_nowait()
            self._frames.put_nowait(None)

    def _problem(self, what: str) -> None:
        self.problems[what] += 1
        if (n := self.problems[what]) in _LOGGED_AT:
            log.warning("media stream: %s, ignored (%d so far)", what, n)

    # -- writing --------------------------------------------------------------------------
    async def _send_audio(self) -> None:
        """Pull the playout one frame every 20 ms while it has audio; mark what was sent."""
        playout = self._playout
        assert playout is not None
        frame_s = playout.frame_samples / playout.rate
        due = self.clock.now()
        try:
            while True:
                if playout.queued_samples == 0:
                    await self._mark()  # a pause (or a hold): confirm what was sent
                    while playout.queued_samples == 0:
                        self._audio.clear()
                        await self._audio.wait()
                    due = max(due, self.clock.now())  # never faster than real time
                if (wait := due - self.clock.now()) > 0:
                    await self.clock.sleep(wait)
                pcm = playout.pull()
                if pcm is None:
                    continue
                now = self.clock.now()  # Twilio plays it from its arrival or after the last
                self._far_free = max(self._far_free, now) + len(pcm) / playout.rate
                ended_clause = playout.ended_clause
                for payload in self._encoder.push(pcm):
                    await self._send({"event": "media", "media": {
                        "payload": base64.b64encode(payload).decode()}})
                self._sent_audio = True
                self._unmarked += 1
                due += frame_s
                if ended_clause or self._unmarked >= MARK_EVERY_FRAMES:
                    await self._mark()
        except ConnectionError:
            log.info("media stream closed while the agent was speaking")

    async def _mark(self) -> None:
        if not self._unmarked:
            return
        assert self._playout is not None
        self._mark_count += 1
        name = str(self._mark_count)
        self._marks[name] = self._playout.pulled
        self._unmarked = 0
        await self._send({"event": "mark", "mark": {"name": name}})

    def _hold(self) -> None:
        """The playout is held (the caller may be interrupting): Twilio must stop playing
        now, as a WebRTC caller's audio stops within a frame, not after what it buffered.
        ``clear`` drops that audio, and the playout gets back what Twilio had not played
        (plus :data:`REWIND_MARGIN_S`), so that if the hold is released (a backchannel) the
        caller hears the reply on from where it stopped, a word repeated rather than lost."""
        if not self._sent_audio or self.start_info is None or self._closed:
            return
        assert self._playout is not None
        unplayed = self._far_free + REWIND_MARGIN_S - self.clock.now()
        if unplayed > 0:
            self._playout.rewind(round(unplayed * self._playout.rate))
        self._far_free = 0.0
        self._clear()

    def _clear(self) -> None:
        """The playout was flushed (barge-in): Twilio drops what it buffered, at once. The
        marks it then echoes mean nothing (Twilio echoes pending marks on a clear)."""
        self._marks.clear()
        self._unmarked = 0
        self._far_free = 0.0
        if not self._sent_audio or self.start_info is None or self._closed:
            return
        self._sent_audio = False
        task = asyncio.create_task(self._send_clear(), name="phone-clear")
        self._clears.add(task)
        task.add_done_callback(self._clears.discard)

    async def _send_clear(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._send({"event": "clear"})

    async def _send(self, message: dict[str, object]) -> None:
        assert self.start_info is not None
        message["streamSid"] = self.start_info.stream_sid
        async with self._send_lock:
            if self.ws.closed:
                raise ConnectionResetError("the media stream is closed")
            await self.ws.send_str(json.dumps(message, separators=(",", ":")))


def _integer(value: object) -> int | None:
    """Twilio's numbers are strings ("12"); None for anything that is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def _parse_start(start: object) -> StreamStart | None:
    if not isinstance(start, dict):
        return None
    sid, call_sid = start.get("streamSid"), start.get("callSid")
    fmt = start.get("mediaFormat")
    params = start.get("customParameters", {})
    if not (isinstance(sid, str) and sid and isinstance(call_sid, str) and call_sid
            and isinstance(fmt, dict) and isinstance(params, dict)):
        return None
    if (fmt.get("encoding") != "audio/x-mulaw" or _integer(fmt.get("sampleRate")) != PHONE_RATE
            or _integer(fmt.get("channels")) not in (None, 1)):
        return None
    return StreamStart(sid[:64], call_sid[:64],
                       {str(k)[:64]: str(v)[:256] for k, v in list(params.items())[:32]})
