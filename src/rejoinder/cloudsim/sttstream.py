"""The simulated cloud's streaming speech to text: one WebSocket per utterance.

    GET /v1/stt/stream?sample_rate=16000[&transcript=...]    (a WebSocket upgrade)
        client -> binary   PCM16 little-endian mono audio, whole samples, as it is spoken
        client -> text     {"type": "finalize"}: the caller paused, the transcript please
        server -> text     {"type": "partial", "text": ...} every ``stt.partial_interval_s``
                           (when its text changed), for the audio received up to
                           ``stt.partial_lag_s`` before it
        server -> text     {"type": "final", "text": ...} ``stt.final_s`` (+ jitter) after
                           each finalize, for all the audio received before it; finals
                           come in the order of the finalizes
        server -> text     {"type": "error", "message": ...}, then the socket closes
                           (1003): a message that is not whole samples or a known request

The socket stays open after a final: the caller may go on, and a later finalize gets the
transcript of the whole utterance so far. The client closes it when the utterance is over.
One socket per utterance keeps the utterance's state (its audio) exactly as long as its
socket, so no message needs an utterance id; the handshake is paid while the caller is
already speaking (it delays the first partial, never the final).

The text is the ``X-Transcript`` header or ``transcript`` query parameter if sent, else the
profile's ``stt.transcript``, else "utterance of 2.3 seconds" (what ``POST /v1/stt``
answers); a known text grows in the partials at ``stt.words_per_s``. A bad sample rate, or
a request that is not an upgrade, gets HTTP 400 with a JSON error before any socket opens.

Injected failures (one draw per socket, from the STT's dice): a "timeout" socket reads
everything and never answers; a "drop" socket is cut (no close frame) when the first
finalize arrives.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import random

from aiohttp import WSCloseCode, WSMsgType, web

from rejoinder.cloudsim.faults import Fault
from rejoinder.cloudsim.profile import STTProfile
from rejoinder.cloudsim.timeline import Timeline
from rejoinder.core.clock import Clock
from rejoinder.core.tasks import cancel_all

log = logging.getLogger(__name__)

MIN_RATE, MAX_RATE = 8_000, 48_000


def sample_rate(request: web.Request) -> int | None:
    """The ``sample_rate`` query parameter (default 16000), or None if it is not valid."""
    try:
        rate = int(request.query.get("sample_rate", "16000"))
    except ValueError:
        return None
    return rate if MIN_RATE <= rate <= MAX_RATE else None


def seconds_text(samples: int, rate: int) -> str:
    return f"utterance of {samples / rate:.1f} seconds"


class StreamSession:
    """One socket's utterance: the audio received (when, how much), its partials and
    finals. ``run`` serves it until the client closes the socket."""

    def __init__(self, ws: web.WebSocketResponse, profile: STTProfile, rate: int, text: str,
                 clock: Clock, fault: Fault | None, seed: int) -> None:
        self.ws = ws
        self.profile = profile
        self.rate = rate
        self.words = text.split()
        self.clock = clock
        self.fault = fault
        self._rng = random.Random(seed)
        self.samples = 0  # received so far
        # (arrival time, samples received by then); entries older than the lag are merged
        self._arrivals: collections.deque[tuple[float, int]] = collections.deque()
        self._finalizes: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
        self._sent_partial = ""
        self._send_lock = asyncio.Lock()

    def text(self, samples: int, *, final: bool) -> str:
        if not self.words:
            return seconds_text(samples, self.rate)
        if final:
            return " ".join(self.words)
        known = int(samples / self.rate * self.profile.words_per_s)
        return " ".join(self.words[:known])

    async def run(self, request: web.Request) -> None:
        helpers = [] if self.fault == "timeout" else [
            asyncio.create_task(self._partials()), asyncio.create_task(self._finals())]
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.BINARY:
                    if len(msg.data) % 2:
                        await self._refuse("binary messages must be whole PCM16 samples "
                                           "(an even byte count)")
                        return
                    self.samples += len(msg.data) // 2
                    self._arrivals.append((self.clock.now(), self.samples))
                elif msg.type == WSMsgType.TEXT:
                    if not _is_finalize(msg.data):
                        await self._refuse('the only text message is {"type": "finalize"}')
                        return
                    if self.fault == "drop":
                        log.debug("dropping a stt stream at its finalize, as the profile asks")
                        if request.transport is not None:
                            request.transport.close()
                        return
                    self._finalizes.put_nowait((self.clock.now(), self.samples))
                # CLOSE, CLOSING, ERROR: the iteration ends by itself
        finally:
            await cancel_all(helpers)

    async def _partials(self) -> None:
        p = self.profile
        timeline = Timeline(self.clock)
        while True:
            await timeline.sleep(p.partial_interval_s)
            heard = self._heard_by(self.clock.now() - p.partial_lag_s)
            text = self.text(heard, final=False) if heard else ""
            if text and text != self._sent_partial:
                self._sent_partial = text
                await self._send({"type": "partial", "text": text})

    def _heard_by(self, cutoff: float) -> int:
        """Samples received at or before ``cutoff``."""
        arrivals = self._arrivals
        while len(arrivals) > 1 and arrivals[1][0] <= cutoff:
            arrivals.popleft()  # the first entry stays the latest one before the cutoff
        if arrivals and arrivals[0][0] <= cutoff:
            return arrivals[0][1]
        return 0

    async def _finals(self) -> None:
        p = self.profile
        while True:
            asked, samples = await self._finalizes.get()
            extra = self._rng.uniform(0.0, p.jitter_s) if p.jitter_s else 0.0
            delay = asked + p.final_s + extra - self.clock.now()
            if delay > 0:
                await self.clock.sleep(delay)
            await self._send({"type": "final", "text": self.text(samples, final=True)})

    async def _send(self, message: dict[str, str]) -> None:
        async with self._send_lock:
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(message))

    async def _refuse(self, message: str) -> None:
        await self._send({"type": "error", "message": message})
        await self.ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"bad input")


def _is_finalize(data: str) -> bool:
    try:
        message = json.loads(data)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "finalize"
