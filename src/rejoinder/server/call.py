"""One call on the server: its peer connection, its conversation, its event channel.

A call holds one of the server's slots until it is closed, so every way a caller can
fail to arrive or disappear ends it: no connection within ``connect_timeout_s`` of the
answer, no audio from a connected caller for ``media_timeout_s``, ICE or DTLS failure,
or the caller's track ending.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from rejoinder.config import Config
from rejoinder.core.clock import Clock
from rejoinder.core.errors import SignalingError
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.observability.logs import call_id_var
from rejoinder.observability.measured import MeasuredTurns
from rejoinder.providers.base import ChatMessage, Stack
from rejoinder.transports.webrtc import (
    AgentTrack,
    caller_frames,
    close_quietly,
    ice_configuration,
    pinned_host_addresses,
    set_jitter_buffer,
)
from rejoinder.turn.engine import Conversation
from rejoinder.turn.playout import Playout

log = logging.getLogger(__name__)


class Call:
    """A caller connected over WebRTC. ``close()`` is idempotent."""

    def __init__(self, config: Config, stack: Stack, on_closed: Callable[[Call], None],
                 clock: Clock | None = None) -> None:
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
        self.playout = Playout()
        self.conversation = Conversation(
            stack, config.agent.system_prompt, options=config.turn, playout=self.playout,
            events=self.send_event, call_id=self.id, greeting=config.agent.greeting or None)
        self.pc = RTCPeerConnection(ice_configuration(
            config.server.ice_servers, config.server.ice_username, config.server.ice_credential))
        self._channel: Any = None
        self._backlog: deque[str] = deque(maxlen=200)
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._heard_at = 0.0  # clock time of the caller's latest audio frame
        self.closed = asyncio.Event()

    async def answer(self, sdp: str, media_addresses: list[str]) -> RTCSessionDescription:
        """Apply the caller's offer and return our answer (ICE gathering included)."""
        call_id_var.set(self.id)
        pc = self.pc
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            # No trickle ICE: the offer carries every candidate there will be. Saying so
            # lets ICE fail as soon as its checks do, instead of waiting for more.
            await pc.addIceCandidate(None)
        except Exception as exc:  # aiortc raises ValueError, KeyError, ... on bad SDP
            raise _unusable(exc) from exc
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise SignalingError("no_audio", "the offer has no audio media section")
        try:
            audio[0].sender.replaceTrack(AgentTrack(self.playout))
            set_jitter_buffer(audio[0].receiver, self.config.server.jitter_buffer_frames)
            audio[0].direction = "sendrecv"
            with pinned_host_addresses(media_addresses):
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            raise _unusable(exc) from exc
        self.watch()
        return pc.localDescription

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

    # -- aiortc callbacks ---------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._task is not None:
            return
        call_id_var.set(self.id)
        log.info("caller audio track started")
        self._task = asyncio.create_task(self._converse(track), name=f"call-{self.id}")

    async def _converse(self, track: MediaStreamTrack) -> None:
        # Per-call warm-up: the LLM evaluates the (byte-identical) system prompt into its
        # prefix cache while the caller is still connecting.
        warm = asyncio.create_task(self.stack.llm.warm([ChatMessage(
            "system", self.config.agent.system_prompt)]))
        try:
            await self.conversation.run(caller_frames(track, on_frame=self._heard))
        finally:
            await cancel_and_wait(warm, what="llm warm-up")
            self.close_soon()

    def _on_datachannel(self, channel: Any) -> None:
        self._channel = channel
        channel.on("open", self._flush_backlog)
        channel.on("message", self.on_caller_message)
        if channel.readyState == "open":
            self._flush_backlog()

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("connection %s", state)
        if state == "connected":
            self._connected.set()
        if state in ("failed", "closed"):
            self.close_soon()

    # -- events to the caller -----------------------------------------------------------
    def send_event(self, event: dict[str, object]) -> None:
        for observe in self.observers:
            observe(event)
        message = json.dumps(event, separators=(",", ":"))
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(message)
        else:
            self._backlog.append(message)

    def on_caller_message(self, message: object) -> None:
        """A message on the events channel: a valid ``measured`` one goes to the
        observers (the call's record, metrics, spans); anything else is ignored."""
        event = self.measured.accept(message)
        if event is not None:
            for observe in self.observers:
                observe(event)

    def _flush_backlog(self) -> None:
        while self._backlog and self._channel is not None:
            self._channel.send(self._backlog.popleft())

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
            await close_quietly(self.pc)
        finally:
            self.closed.set()
            log.info("call ended after %d turns", len(self.conversation.traces))
            self._on_closed(self)


def _unusable(exc: Exception) -> SignalingError:
    """aiortc's own words stay in the log; the caller gets a stable message."""
    return SignalingError("bad_offer", "the offer could not be used",
                          detail=f"{type(exc).__name__}: {str(exc)[:200]}")
