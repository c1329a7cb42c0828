"""One call on the server: its peer connection, its conversation, its event channel."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from rejoinder.config import Config
from rejoinder.core.errors import SignalingError
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.observability.logs import call_id_var
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

    def __init__(self, config: Config, stack: Stack, on_closed: Callable[[Call], None]) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.config = config
        self.stack = stack
        self._on_closed = on_closed
        # Also given every event the caller gets (the call's recorder).
        self.observers: list[Callable[[dict[str, object]], None]] = []
        self.playout = Playout()
        self.conversation = Conversation(
            stack, config.agent.system_prompt, options=config.turn, playout=self.playout,
            events=self.send_event, call_id=self.id, greeting=config.agent.greeting or None)
        self.pc = RTCPeerConnection(ice_configuration(
            config.server.ice_servers, config.server.ice_username, config.server.ice_credential))
        self._channel: Any = None
        self._backlog: deque[str] = deque(maxlen=200)
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
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
        except Exception as exc:  # aiortc raises ValueError, KeyError, ... on bad SDP
            raise SignalingError(f"malformed SDP offer: {exc}") from exc
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise SignalingError("the offer has no audio media section")
        audio[0].sender.replaceTrack(AgentTrack(self.playout))
        set_jitter_buffer(audio[0].receiver, self.config.server.jitter_buffer_frames)
        audio[0].direction = "sendrecv"
        with pinned_host_addresses(media_addresses):
            try:
                await pc.setLocalDescription(await pc.createAnswer())
            except Exception as exc:
                raise SignalingError(f"cannot answer this offer: {exc}") from exc
        return pc.localDescription

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
            await self.conversation.run(caller_frames(track))
        finally:
            await cancel_and_wait(warm, what="llm warm-up")
            self.close_soon()

    def _on_datachannel(self, channel: Any) -> None:
        self._channel = channel
        channel.on("open", self._flush_backlog)
        if channel.readyState == "open":
            self._flush_backlog()

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("connection %s", state)
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
            await cancel_and_wait(self._task, what=f"call {self.id} conversation")
            await self.conversation.close()
            await close_quietly(self.pc)
        finally:
            self.closed.set()
            log.info("call ended after %d turns", len(self.conversation.traces))
            self._on_closed(self)
