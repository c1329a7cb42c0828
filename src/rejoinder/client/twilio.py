"""A phone caller that speaks Twilio Media Streams: the server sees exactly what Twilio sends.

Written from Twilio's documented protocol, not from the server's code, so that it tests
the server's phone path the way a real call would:

1. the voice webhook: ``POST {base}/twilio/voice``, form-encoded call parameters (``CallSid``,
   ``AccountSid``, ``From``, ``To``, ``Direction=inbound``, ``CallStatus=ringing``, ...),
   signed with ``X-Twilio-Signature`` (the ``twilio`` library's ``RequestValidator``: the
   full URL and the sorted parameters, HMAC-SHA1 with the auth token);
2. the TwiML answer: ``<Response><Connect><Stream url=...>`` with ``<Parameter>``\\ s (a
   bidirectional stream; anything else is a refused call);
3. the WebSocket to that URL, its upgrade signed over the URL alone; then ``connected``,
   ``start`` (sequence number 1) and a ``media`` message every 20 ms in real time (160 mu-law
   bytes, silence when the caller is quiet, like a phone line), ``dtmf`` when asked and
   ``stop`` at the end. Every message but ``connected`` carries the next sequence number.

From the server it takes ``media`` (mu-law audio, queued and played in real time, 20 ms per
160 bytes), ``mark`` (echoed with the same name once all the audio queued before it has
played: how the server learns what the caller heard) and ``clear`` (queued audio dropped at
once, every pending mark echoed immediately). What was *played*, with the time each 20 ms
started playing, is :attr:`PhoneCall.received`: the measurements of
:mod:`rejoinder.client.measure` and :mod:`rejoinder.bench.measure` read it unchanged.

:class:`PhoneMic` and :class:`PhoneCall` offer the same surface as ``connection.Mic`` and
``connection.Connection``. Media Streams have no events channel, so a phone call has no
server events (transcripts, stage traces) to join.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import secrets
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin

import aiohttp
import numpy as np
from twilio.request_validator import RequestValidator

from rejoinder.client.connection import CallFailed
from rejoinder.client.measure import Received
from rejoinder.core.audio import PCM
from rejoinder.core.clock import Clock
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.core.telephony import (
    MULAW_SILENCE,
    PHONE_FRAME_BYTES,
    PHONE_RATE,
    ulaw_decode,
    ulaw_encode,
)

__all__ = ["PHONE_RATE", "CallIdentity", "PhoneCall", "PhoneMic", "StreamAnswer",
           "parse_twiml", "sign"]

SIGNATURE_HEADER = "X-Twilio-Signature"
VOICE_PATH = "/twilio/voice"
FRAME_S = PHONE_FRAME_BYTES / PHONE_RATE
_SILENCE_PAYLOAD = base64.b64encode(bytes([MULAW_SILENCE]) * PHONE_FRAME_BYTES).decode()
_EPS = 1e-6  # seconds: below this, two times on the caller's clock are the same


def new_sid(prefix: str) -> str:
    """A Twilio resource id: two letters and 32 hex digits (``CA...``, ``MZ...``)."""
    return prefix + secrets.token_hex(16)


def sign(auth_token: str, url: str, params: dict[str, str] | None = None) -> str:
    """``X-Twilio-Signature`` for a request to ``url`` with form ``params`` (none for the
    WebSocket upgrade), as Twilio computes it."""
    return str(RequestValidator(auth_token).compute_signature(url, params or {}))


@dataclass(frozen=True)
class CallIdentity:
    """Who calls whom: the ids and numbers Twilio would put in the webhook. The numbers are
    in the 555-01xx range reserved for fiction, so no one's data travels."""

    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    from_number: str = "+12025550142"
    to_number: str = "+12025550199"

    def webhook_params(self) -> dict[str, str]:
        return {
            "AccountSid": self.account_sid, "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid, "CallStatus": "ringing", "Direction": "inbound",
            "From": self.from_number, "Caller": self.from_number,
            "To": self.to_number, "Called": self.to_number,
            "FromCountry": "US", "CallerCountry": "US", "ToCountry": "US", "CalledCountry": "US",
        }


@dataclass(frozen=True)
class StreamAnswer:
    """What the TwiML told Twilio to do: open a bidirectional stream to ``url``."""

    url: str
    parameters: dict[str, str]


def parse_twiml(xml: str, base_url: str) -> StreamAnswer:
    """The ``<Connect><Stream>`` of a TwiML answer; CallFailed for anything else (a
    ``<Reject>`` or ``<Hangup>`` is a refusal, status 503, as a busy server's answer)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise CallFailed(f"the voice webhook did not answer TwiML: {exc}") from exc
    if root.tag != "Response":
        raise CallFailed(f"the voice webhook answered <{root.tag}>, not <Response>")
    if root.find("Reject") is not None or root.find("Hangup") is not None:
        raise CallFailed("the server rejected the call", status=503)
    stream = root.find("Connect/Stream")
    if stream is None or not stream.get("url"):
        raise CallFailed("the TwiML has no <Connect><Stream url=...> (a bidirectional stream)")
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    # A relative URL is resolved against the webhook's, in its WebSocket scheme.
    ws_base = base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
    return StreamAnswer(urljoin(ws_base, stream.get("url", "")), params)


async def answer(http: aiohttp.ClientSession, base_url: str, identity: CallIdentity,
                 auth_token: str | None) -> StreamAnswer:
    """Ring the server: POST the voice webhook and read its TwiML."""
    url = base_url.rstrip("/") + VOICE_PATH
    params = identity.webhook_params()
    headers = {"User-Agent": "TwilioProxy/1.1"}
    if auth_token:
        headers[SIGNATURE_HEADER] = sign(auth_token, url, params)
    try:
        async with http.post(url, data=params, headers=headers) as resp:
            body = await resp.text()
    except aiohttp.ClientError as exc:
        raise CallFailed(f"cannot reach {url}: {exc}") from exc
    if resp.status != 200:
        raise CallFailed(f"the voice webhook refused the call ({resp.status}): {body[:200]}",
                         status=resp.status)
    return parse_twiml(body, url)


class StreamSocket(Protocol):
    """The WebSocket as the caller uses it (aiohttp's client WebSocket, or a test's fake)."""

    async def send_str(self, data: str) -> None: ...
    async def receive(self) -> aiohttp.WSMessage: ...
    async def close(self) -> bool: ...


class PhoneMic:
    """The caller's voice on the line: queued 8 kHz audio in real time, silence otherwise.

    Like ``connection.Mic``: samples are numbered from the start of the stream, frame k
    holds samples ``k*160 ... k*160+159`` and the 20 ms *before* it was sent, so
    :meth:`time_of` puts the caller's packetisation delay inside every latency.
    """

    rate = PHONE_RATE

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.sent_at: list[float] = []
        self.idle = asyncio.Event()
        self.idle.set()
        self._pending = np.zeros(0, dtype=np.int16)
        self._pending_start = 0

    def play(self, pcm8k: PCM) -> int:
        """Queue audio after whatever is queued; returns the number of its first sample."""
        if not self._pending.size:
            self._pending_start = len(self.sent_at) * PHONE_FRAME_BYTES
            self._pending = pcm8k
        else:
            self._pending = np.concatenate((self._pending, pcm8k))
        if pcm8k.size:
            self.idle.clear()
        return self._pending_start + len(self._pending) - len(pcm8k)

    def time_of(self, sample: int) -> float | None:
        """Caller-clock time at which ``sample`` was spoken (None: not sent yet)."""
        k, within = divmod(sample, PHONE_FRAME_BYTES)
        if k >= len(self.sent_at):
            return None
        return self.sent_at[k] - (PHONE_FRAME_BYTES - within) / PHONE_RATE

    def next_payload(self) -> str:
        """The next frame, base64 mu-law, stamped as sent now."""
        self.sent_at.append(self.clock.now())
        if not self._pending.size:
            return _SILENCE_PAYLOAD
        pcm = self._pending[:PHONE_FRAME_BYTES]
        self._pending = self._pending[PHONE_FRAME_BYTES:]
        self._pending_start += PHONE_FRAME_BYTES
        if not self._pending.size:
            self.idle.set()
        codes = ulaw_encode(pcm)
        if len(codes) < PHONE_FRAME_BYTES:
            codes = codes.ljust(PHONE_FRAME_BYTES, bytes([MULAW_SILENCE]))
        return base64.b64encode(codes).decode()


class Speaker:
    """The caller's ear: the server's audio queued and played in real time.

    Each 20 ms frame is added to :attr:`received` when it *starts playing*: at its arrival
    if the speaker was idle, else when the frame before it ends. A mark is echoed (through
    ``echo``) when every frame queued before it has finished playing; :meth:`clear` drops
    the queue and cuts the frame playing at the instant of the clear.
    """

    def __init__(self, clock: Clock, echo: Callable[[str], Awaitable[None]]) -> None:
        self.clock = clock
        self.echo = echo
        self.received = Received(PHONE_RATE, [], [])
        self._queue: deque[tuple[float, PCM] | str] = deque()
        self._free_at = -math.inf  # when the frame playing ends
        self._changed = asyncio.Event()

    def queue_audio(self, pcm: PCM) -> None:
        now = self.clock.now()
        for i in range(0, len(pcm), PHONE_FRAME_BYTES):
            self._queue.append((now, pcm[i:i + PHONE_FRAME_BYTES]))
        self._changed.set()

    def queue_mark(self, name: str) -> None:
        self._queue.append(name)
        self._changed.set()

    def clear(self) -> list[str]:
        """Drop every queued frame and stop the one playing; returns the pending marks."""
        now = self.clock.now()
        marks = [item for item in self._queue if isinstance(item, str)]
        self._queue.clear()
        if self._free_at > now and self.received.chunks:
            played = round((now - self.received.times[-1]) * PHONE_RATE)
            self.received.chunks[-1] = self.received.chunks[-1][:max(0, played)]
            self._free_at = now
        self._changed.set()
        return marks

    async def run(self) -> None:
        while True:
            now = self.clock.now()
            if self._free_at > now + _EPS:  # a frame is playing
                await self._until_changed(self._free_at - now)
                continue
            if not self._queue:
                await self._until_changed(None)
                continue
            item = self._queue.popleft()
            if isinstance(item, str):
                await self.echo(item)
                continue
            arrived, pcm = item
            start = max(self._free_at, arrived)
            self.received.times.append(start)
            self.received.chunks.append(pcm)
            self._free_at = start + len(pcm) / PHONE_RATE

    async def _until_changed(self, at_most_s: float | None) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most_s):
                await self._changed.wait()


class PhoneCall:
    """One call from the phone's side, the same surface as ``connection.Connection``:
    ``open``, ``close``, ``received`` (what was played), ``call_id`` (the CallSid).

    ``marks_echoed`` keeps the marks sent back (time, name) and ``protocol_errors`` what
    the server sent that Twilio would not accept, for tests and diagnosis.
    """

    def __init__(self, mic: PhoneMic, *, auth_token: str | None = None,
                 identity: CallIdentity | None = None) -> None:
        self.mic = mic
        self.clock = mic.clock
        self.auth_token = auth_token
        self.identity = identity or CallIdentity()
        self.call_id = self.identity.call_sid
        self.stream_sid = new_sid("MZ")
        self.stream: StreamAnswer | None = None
        self.speaker = Speaker(self.clock, self._echo_mark)
        self.received = self.speaker.received
        self.events: list[dict[str, Any]] = []  # Media Streams carry no server events
        self.event_arrived = asyncio.Event()
        self.wall_offset = self.clock.wall() - self.clock.now()
        self.marks_echoed: list[tuple[float, str]] = []
        self.protocol_errors: list[str] = []  # also in ``events``, as "protocol_error"
        self.hung_up = asyncio.Event()  # the server closed the stream
        self._http: aiohttp.ClientSession | None = None
        self._ws: StreamSocket | None = None
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    async def open(self, base_url: str) -> None:
        """Ring ``base_url``'s voice webhook, connect the stream it answers, start talking."""
        self._http = aiohttp.ClientSession()
        try:
            stream = await answer(self._http, base_url, self.identity, self.auth_token)
            headers = {SIGNATURE_HEADER: sign(self.auth_token, stream.url)} \
                if self.auth_token else {}
            try:
                ws = await self._http.ws_connect(stream.url, headers=headers)
            except (aiohttp.ClientError, OSError) as exc:
                status = exc.status if isinstance(exc, aiohttp.WSServerHandshakeError) else None
                raise CallFailed(f"cannot open the media stream {stream.url}: {exc}",
                                 status=status) from exc
        except BaseException:
            await self._http.close()
            self._http = None
            raise
        await self.attach(ws, stream)

    async def attach(self, ws: StreamSocket, stream: StreamAnswer) -> None:
        """Start the media stream on an open WebSocket: ``connected``, ``start``, media."""
        self._ws, self.stream = ws, stream
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send({"event": "start", "start": {
            "accountSid": self.identity.account_sid, "streamSid": self.stream_sid,
            "callSid": self.identity.call_sid, "tracks": ["inbound"],
            "customParameters": dict(stream.parameters),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": PHONE_RATE,
                            "channels": 1},
        }})
        self._tasks = [asyncio.create_task(self._talk()), asyncio.create_task(self._listen()),
                       asyncio.create_task(self.speaker.run())]

    async def send_dtmf(self, digit: str) -> None:
        """The caller presses a key."""
        await self._send({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": digit}})

    async def close(self) -> None:
        """Hang up: ``stop``, then close the stream. Idempotent."""
        talk = self._tasks[0] if self._tasks else None
        await cancel_and_wait(talk, what="phone media sender")
        if self._ws is not None and not self._stopped and not self.hung_up.is_set():
            self._stopped = True
            with contextlib.suppress(ConnectionError):  # the server had gone already
                await self._send({"event": "stop", "stop": {
                    "accountSid": self.identity.account_sid,
                    "callSid": self.identity.call_sid}})
        if self._ws is not None:
            await self._ws.close()
        for task in self._tasks[1:]:
            await cancel_and_wait(task, what="phone stream")
        if self._http is not None:
            await self._http.close()
            self._http = None

    def traces(self) -> list[dict[str, Any]]:
        return []

    async def _send(self, message: dict[str, Any]) -> None:
        """Send one message; all but ``connected`` get the next sequence number (as a
        string, first after ``streamSid``-less ``connected``: ``start`` is "1")."""
        assert self._ws is not None
        async with self._send_lock:
            if message["event"] != "connected":
                self._seq += 1
                message = {"event": message["event"], "sequenceNumber": str(self._seq),
                           **{k: v for k, v in message.items() if k != "event"},
                           "streamSid": self.stream_sid}
            await self._ws.send_str(json.dumps(message))

    async def _talk(self) -> None:
        """A media message every 20 ms, on a fixed schedule from the first."""
        start = self.clock.now()
        k = 0
        try:
            while True:
                wait = start + k * FRAME_S - self.clock.now()
                if wait > 0:
                    await self.clock.sleep(wait)
                payload = self.mic.next_payload()
                await self._send({"event": "media", "media": {
                    "track": "inbound", "chunk": str(k + 1),
                    "timestamp": str(round(k * FRAME_S * 1000)), "payload": payload}})
                k += 1
        except ConnectionError:
            self.hung_up.set()

    async def _listen(self) -> None:
        assert self._ws is not None
        while True:
            msg = await self._ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                await self._on_message(str(msg.data))
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                              aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                self.hung_up.set()
                return
            else:
                self._refuse(f"a {msg.type.name} frame")

    async def _on_message(self, text: str) -> None:
        try:
            message = json.loads(text)
            event = message["event"]
        except (ValueError, KeyError, TypeError):
            self._refuse("a message that is not a JSON event")
            return
        if event in ("media", "mark", "clear") and message.get("streamSid") != self.stream_sid:
            self._refuse(f"a {event} for another stream")
            return
        if event == "media":
            try:
                payload = base64.b64decode(message["media"]["payload"], validate=True)
            except (KeyError, TypeError, binascii.Error):
                self._refuse("a media message without a base64 payload")
                return
            self.speaker.queue_audio(ulaw_decode(payload))
        elif event == "mark":
            mark = message.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self._refuse("a mark without a name")
                return
            self.speaker.queue_mark(name)
        elif event == "clear":
            for name in self.speaker.clear():
                await self._echo_mark(name)
        else:
            self._refuse(f"an unknown event {event!r}")

    def _refuse(self, what: str) -> None:
        """A message from the server that Twilio would not accept: dropped, noted."""
        self.protocol_errors.append(what)
        self.events.append({"type": "protocol_error", "message": what})

    async def _echo_mark(self, name: str) -> None:
        self.marks_echoed.append((self.clock.now(), name))
        with contextlib.suppress(ConnectionError):  # the server hung up: no one to tell
            await self._send({"event": "mark", "mark": {"name": name}})
