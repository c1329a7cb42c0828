"""A streaming session of :class:`~rejoinder.providers.remote.RemoteSTT`: the caller's audio
goes up a WebSocket as it is spoken, interim words come back while they speak.

One socket per utterance (the protocol is in :mod:`rejoinder.providers.remote`): opened by
the utterance's first frame, closed by ``reset()``. ``push`` only queues the frame; a task
per socket connects, sends the queue in order (frames queued meanwhile go up as one
message) and reads the service's messages: a partial replaces ``partial()``, a final
answers the oldest ``finish()`` still waiting (each ``finish()`` sends one finalize).

Failures end the utterance: a refused upgrade, a socket that cannot be opened or that
closes before the utterance is over, or an error message from the service make its
waiting and later ``finish()`` calls raise (:class:`ProviderUnavailable`, or
:class:`ProviderStreamError`, or :class:`ProviderError`), and the frames pushed after it
are dropped; the next utterance (after ``reset()``) opens a new socket. The time limit on
``finish()`` is the base class's (``stream_idle_timeout_s``). A socket left open without
audio or a request for ``IDLE_CLOSE_S`` (a call that ended mid-utterance) is closed.
Logs name the URL and the failure, never the words.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from typing import Final

import aiohttp
import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE
from rejoinder.core.errors import ProviderError, ProviderStreamError, ProviderUnavailable
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.providers.remote._http import UNAVAILABLE_STATUSES, HTTPClient, connection_error

log = logging.getLogger(__name__)

#: A socket with no audio and no transcript asked for this long is closed.
IDLE_CLOSE_S = 10.0
_FINALIZE: Final = '{"type": "finalize"}'
_CLOSE: Final = None  # queued by ``reset()``: close the socket after what came before


class RemoteSTTStream:
    """One caller's utterances, each over its own socket (``STTStream``)."""

    def __init__(self, name: str, url: str, http: HTTPClient) -> None:
        self.name = name
        self.url = url
        self._http = http
        self._utterance: _Utterance | None = None
        self._closing: set[asyncio.Task[None]] = set()  # sockets of finished utterances
        self._speech = 0  # speech frames pushed
        self._final: str | None = None  # the transcript, while no speech came after it

    async def push(self, frame: PCM, speech: bool | None = None) -> None:
        if self._utterance is None:
            self._utterance = _Utterance(self)
        self._utterance.send(frame)
        if speech or speech is None:
            self._speech += 1
            self._final = None

    async def finish(self) -> str:
        if self._final is not None:
            return self._final
        if self._utterance is None:
            return ""  # nothing was said
        speech = self._speech
        text = (await self._utterance.finalize()).strip()
        if speech == self._speech:
            self._final = text
        return text

    def partial(self) -> str:
        return self._utterance.partial if self._utterance is not None else ""

    def reset(self) -> None:
        utterance, self._utterance = self._utterance, None
        self._speech = 0
        self._final = None
        if utterance is not None and not utterance.task.done():
            utterance.close()
            self._closing.add(utterance.task)
            utterance.task.add_done_callback(self._closing.discard)


class _Utterance:
    """One socket: its outgoing queue, the finals waited for, the latest partial."""

    def __init__(self, session: RemoteSTTStream) -> None:
        self.session = session
        self.partial = ""
        self._out: collections.deque[bytes | str | None] = collections.deque()
        self._queued = asyncio.Event()  # set while ``_out`` has something
        self._waiting: collections.deque[asyncio.Future[str]] = collections.deque()
        self._failure: tuple[type[ProviderError], str] | None = None
        self._closing = False
        self.task = asyncio.create_task(self._run(), name="stt-stream")

    def send(self, frame: PCM) -> None:
        if self._failure is None and not self._closing:
            self._queue(np.ascontiguousarray(frame, dtype="<i2").tobytes())

    async def finalize(self) -> str:
        if self._failure is not None:
            cls, message = self._failure
            raise cls(self.session.name, message)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._queue(_FINALIZE)
        return await future  # cancelled with the caller (a time limit): its final is skipped

    def close(self) -> None:
        self._closing = True
        self._queue(_CLOSE)

    def _queue(self, item: bytes | str | None) -> None:
        self._out.append(item)
        self._queued.set()

    def _fail(self, cls: type[ProviderError], message: str, *, quiet: bool = False) -> None:
        """The utterance is over for this socket: every waiting and later ``finish()``
        raises ``cls`` (the first failure wins)."""
        if self._failure is None:
            if not self._closing:
                (log.debug if quiet else log.warning)(
                    "%s: the utterance's stream failed: %s", self.session.name, message)
            self._failure = (cls, message)
        cls, message = self._failure
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(cls(self.session.name, message))

    async def _run(self) -> None:
        s = self.session
        try:
            async with s._http.session().ws_connect(
                    s.url, params={"sample_rate": str(SAMPLE_RATE)},
                    timeout=aiohttp.ClientWSTimeout(ws_close=2.0)) as ws:
                log.debug("%s: stream to %s open", s.name, s.url)
                sender = asyncio.create_task(self._send(ws), name="stt-stream-send")
                try:
                    await self._receive(ws)
                finally:
                    await cancel_and_wait(sender, what="stt stream sender")
        except aiohttp.WSServerHandshakeError as exc:
            cls = ProviderUnavailable if exc.status in UNAVAILABLE_STATUSES else ProviderError
            self._fail(cls, f"HTTP {exc.status} from {s.url}: the stream was refused")
        except aiohttp.ClientError as exc:
            error = connection_error(s.name, s.url, exc)
            self._fail(type(error), str(error).removeprefix(f"{s.name}: "))
        except OSError as exc:  # a socket error aiohttp did not wrap
            self._fail(ProviderStreamError, f"connection to {s.url} failed: {exc!r}")
        else:
            self._fail(ProviderStreamError,
                       f"{s.url} closed the stream before the utterance was over")
        finally:
            self._fail(ProviderStreamError, "the stream ended")  # a no-op if settled above

    async def _send(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            while True:
                if not self._out:
                    self._queued.clear()
                    try:
                        async with asyncio.timeout(IDLE_CLOSE_S):
                            await self._queued.wait()
                    except TimeoutError:
                        if self._waiting:
                            continue  # a final is due: finish() has its own time limit
                        self._fail(ProviderStreamError,
                                   f"closed after {IDLE_CLOSE_S:g} s without audio", quiet=True)
                        self._queue(_CLOSE)
                item = self._out.popleft()
                if item is _CLOSE:
                    self._closing = True
                    if self._waiting:  # a recheck of the words still waits for its final
                        await asyncio.wait(set(self._waiting), timeout=IDLE_CLOSE_S)
                    await ws.close()
                    return
                if isinstance(item, str):
                    await ws.send_str(item)
                    continue
                chunks = [item]  # frames queued while the socket was busy: one message
                while self._out and isinstance(self._out[0], bytes):
                    chunks.append(self._out.popleft())  # type: ignore[arg-type]
                await ws.send_bytes(b"".join(chunks) if len(chunks) > 1 else item)
        except (aiohttp.ClientError, ConnectionError) as exc:
            self._fail(ProviderStreamError, f"sending to {self.session.url} failed: {exc!r}")
            await ws.close()

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        url = self.session.url
        async for msg in ws:
            message = None
            if msg.type == aiohttp.WSMsgType.TEXT:
                with contextlib.suppress(ValueError):
                    message = json.loads(msg.data)
            if not isinstance(message, dict):
                self._fail(ProviderError, f"{url} sent a message that is not a JSON object")
                await ws.close()
                return
            kind, text = message.get("type"), message.get("text")
            if kind == "partial" and isinstance(text, str):
                self.partial = text
            elif kind == "final" and isinstance(text, str):
                if self._waiting:  # the oldest finalize's answer
                    future = self._waiting.popleft()
                    if not future.done():
                        future.set_result(text)
            elif kind == "error":
                detail = str(message.get("message", ""))[:300]
                self._fail(ProviderError, f"{url} refused the stream: {detail}")
                await ws.close()
                return
            else:
                self._fail(ProviderError, f"{url} sent an unknown message ({str(kind)[:40]!r})")
                await ws.close()
                return
        log.debug("%s: stream closed (code %s)", self.session.name, ws.close_code)
