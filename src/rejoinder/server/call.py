"""One call on the server: its transport, its conversation, its events.

A call holds one of the server's slots until it is closed, so every way a caller can
fail to arrive or disappear ends it: no connection within ``connect_timeout_s`` of the
answer, no audio from a connected caller for ``media_timeout_s``, the connection failing
or closing, or the caller's audio ending. The transport (WebRTC, a Twilio media stream:
:mod:`rejoinder.transports.base`) reports those; the call does not know which it has.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable

from rejoinder.config import Config
from rejoinder.core.audio import PCM
from rejoinder.core.clock import Clock
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.observability.logs import call_id_var
from rejoinder.observability.measured import MeasuredTurns
from rejoinder.providers.base import ChatMessage, Stack
from rejoinder.transports.base import Transport
from rejoinder.transports.webrtc import WebRTCTransport
from rejoinder.turn.engine import Conversation
from rejoinder.turn.playout import Playout

log = logging.getLogger(__name__)


class Call:
    """A caller on one transport (WebRTC unless given). ``close()`` is idempotent."""

    def __init__(self, config: Config, stack: Stack, on_closed: Callable[[Call], None],
                 clock: Clock | None = None, transport: Transport | None = None) -> None:
        # 128 random bits: a call id is the key to its record, so it must not be guessable.
        self.id = secrets.token_hex(16)
        self.config = config
        self.stack = stack
        self.clock = clock or Clock()
        self._on_closed = on_closed
        # Also given every event the caller gets (the call's recorder).
        self.observers: list[Callable[[dict[str, object]], None]] = []
        # The caller's latency measurements, checked against the turns it was sent.
        self.measured = MeasuredTurns()
        self.observers.append(self.measured.on_event)
        s = config.server
        self.transport: Transport = transport or WebRTCTransport(
            s.ice_servers, s.ice_username, s.ice_credential, s.jitter_buffer_frames)
        self.playout = Playout(self.transport.rate, confirmed=self.transport.confirms_heard)
        self.conversation = Conversation(
            stack, config.agent.system_prompt, options=config.turn, playout=self.playout,
            events=self.send_event, call_id=self.id, greeting=config.agent.greeting or None)
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._heard_at = 0.0  # clock time of the caller's latest audio frame
        self.closed = asyncio.Event()
        self.transport.start(self, self.playout)

    def watch(self) -> None:
        """Start the watchdog (once): from now on the caller has ``connect_timeout_s`` to
        connect, and then must keep sending audio."""
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name=f"watch-{self.id}")

    async def _watch(self) -> None:
        """Close the call when the caller does not connect in time, or when its audio
        stops (a caller whose process or network is gone sends no BYE)."""
        options = self.config.server
        try:
            async with asyncio.timeout(options.connect_timeout_s):
                await self._connected.wait()
        except TimeoutError:
            log.info("caller did not connect within %.1f s", options.connect_timeout_s)
            self.close_soon()
            return
        self._heard_at = self.clock.now()
        while True:
            quiet = self.clock.now() - self._heard_at
            if quiet >= options.media_timeout_s:
                log.info("no audio from the caller for %.1f s; the caller is gone", quiet)
                self.close_soon()
                return
            await self.clock.sleep(options.media_timeout_s - quiet)

    def _heard(self) -> None:
        self._heard_at = self.clock.now()

    # -- what the transport reports (rejoinder.transports.base.CallSide) ----------------
    def on_connected(self) -> None:
        self._connected.set()

    def on_frame(self) -> None:
        self._heard()

    def on_media(self, frames: AsyncIterator[PCM]) -> None:
        if self._task is not None:
            return
        call_id_var.set(self.id)
        self._task = asyncio.create_task(self._converse(frames), name=f"call-{self.id}")

    def on_lost(self) -> None:
        self.close_soon()

    async def _converse(self, frames: AsyncIterator[PCM]) -> None:
        # Per-call warm-up: the LLM evaluates the (byte-identical) system prompt into its
        # prefix cache while the caller is still connecting.
        warm = asyncio.create_task(self.stack.llm.warm([ChatMessage(
            "system", self.config.agent.system_prompt)]))
        try:
            await self.conversation.run(frames)
        finally:
            await cancel_and_wait(warm, what="llm warm-up")
            self.close_soon()

    # -- events to the caller -----------------------------------------------------------
    def send_event(self, event: dict[str, object]) -> None:
        for observe in self.observers:
            observe(event)
        self.transport.send_event(json.dumps(event, separators=(",", ":")))

    def on_caller_message(self, message: object) -> None:
        """A message on the events channel: a valid ``measured`` one goes to the
        observers (the call's record, metrics, spans); anything else is ignored."""
        event = self.measured.accept(message)
        if event is not None:
            for observe in self.observers:
                observe(event)

    def on_caller_event(self, event: dict[str, object]) -> None:
        """An event the transport reports from the caller (a DTMF key): to the observers."""
        for observe in self.observers:
            observe(event)

    # -- ending -------------------------------------------------------------------------
    def close_soon(self) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(), name=f"close-{self.id}")

    async def close(self) -> None:
        self.close_soon()
        await self.closed.wait()

    async def _close(self) -> None:
        try:
            await cancel_and_wait(self._watchdog, what=f"call {self.id} watchdog")
            await cancel_and_wait(self._task, what=f"call {self.id} conversation")
            await self.conversation.close()
            await self.transport.close()
        finally:
            self.closed.set()
            log.info("call ended after %d turns", len(self.conversation.traces))
            self._on_closed(self)

