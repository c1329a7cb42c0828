"""A caller's side of a call: a microphone track out, agent audio and events in.

Used by ``rejoinder call`` and by the benchmark's simulated callers. It connects the
way the web page does: an SDP offer with an Opus audio section and an ``events``
data channel, sent as one ``POST /api/offer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from rejoinder.client.measure import Received
from rejoinder.core.audio import OUT_FRAME_SAMPLES, OUT_RATE, PCM
from rejoinder.core.clock import Clock
from rejoinder.core.errors import RejoinderError
from rejoinder.transports.webrtc import (
    OpusPackets,
    close_quietly,
    frame_to_pcm,
    pinned_host_addresses,
    set_jitter_buffer,
)

log = logging.getLogger(__name__)

FRAME_S = OUT_FRAME_SAMPLES / OUT_RATE
_TIME_BASE = fractions.Fraction(1, OUT_RATE)


class CallFailed(RejoinderError):
    """The server could not be reached or refused the call."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Mic(MediaStreamTrack):
    """The caller's microphone: plays queued 48 kHz audio in real time, silence otherwise
    (sent all the time, like a browser's microphone), as Opus packets encoded inline;
    silence is one packet encoded once, so an idle caller costs the benchmark nothing.

    Samples are numbered from the start of the call (frame k holds samples
    ``k*960 ... k*960+959``). Like a real microphone, frame k holds the 20 ms of audio
    *before* it was handed to the encoder, so :meth:`time_of` puts a sample at the
    hand-over time minus the rest of its frame: the caller's packetisation delay is
    inside every latency measured from it.

    Audio played again and again (a benchmark's script, on every call) can come with its
    packets encoded once beforehand (:func:`encode_frames`): the mic sends those instead
    of encoding the same frames on every call.
    """

    kind = "audio"

    def __init__(self, clock: Clock | None = None) -> None:
        super().__init__()
        self.clock = clock or Clock()
        self.sent_at: list[float] = []
        self.idle = asyncio.Event()
        self.idle.set()
        self._pending = np.zeros(0, dtype=np.int16)
        self._pending_start = 0
        self._silence = np.zeros(OUT_FRAME_SAMPLES, dtype=np.int16)
        self._encoder = OpusPackets()
        self._packets: deque[bytes] = deque()  # encoded beforehand: the next pending frames

    def play(self, pcm48: PCM, packets: Sequence[bytes] | None = None) -> int:
        """Queue audio after whatever is queued; returns the number of its first sample.

        ``packets``: ``encode_frames(pcm48)``, sent as they are when the audio starts on a
        frame of its own (nothing else queued); otherwise the frames are encoded as sent.
        """
        if not self._pending.size:
            self._pending_start = len(self.sent_at) * OUT_FRAME_SAMPLES
            self._pending = pcm48
            self._packets = deque(packets or ())
        else:
            # Only the whole frames queued before keep their packets: the last, partial
            # one now continues with this audio.
            whole = len(self._pending) // OUT_FRAME_SAMPLES
            while len(self._packets) > whole:
                self._packets.pop()
            self._pending = np.concatenate((self._pending, pcm48))
        if pcm48.size:
            self.idle.clear()
        return self._pending_start + len(self._pending) - len(pcm48)

    def time_of(self, sample: int) -> float | None:
        """Caller-clock time at which ``sample`` was spoken (None: not sent yet)."""
        k, within = divmod(sample, OUT_FRAME_SAMPLES)
        if k >= len(self.sent_at):
            return None
        return self.sent_at[k] - (OUT_FRAME_SAMPLES - within) * (1.0 / OUT_RATE)

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        k = len(self.sent_at)
        if k:
            wait = self.sent_at[0] + k * FRAME_S - self.clock.now()
            if wait > 0:
                await self.clock.sleep(wait)
        if self._pending.size:
            pcm = self._pending[:OUT_FRAME_SAMPLES]
            self._pending = self._pending[OUT_FRAME_SAMPLES:]
            self._pending_start += OUT_FRAME_SAMPLES
            if len(pcm) < OUT_FRAME_SAMPLES:
                pcm = np.pad(pcm, (0, OUT_FRAME_SAMPLES - len(pcm)))
            if not self._pending.size:
                self.idle.set()
        else:
            pcm = self._silence
        self.sent_at.append(self.clock.now())
        pts = k * OUT_FRAME_SAMPLES
        if pcm is self._silence:
            return OpusPackets.silence(pts)
        if self._packets:
            return _stamped(self._packets.popleft(), pts)
        packet = self._encoder.encode(pcm, pts)
        return packet if packet is not None else OpusPackets.silence(pts)


def encode_frames(pcm48: PCM) -> list[bytes]:
    """48 kHz mono audio as the Opus packets :class:`Mic` would send for it, one per 20 ms
    frame (the last one padded with silence), from an encoder of its own."""
    encoder = OpusPackets()
    out = []
    for k in range(0, len(pcm48), OUT_FRAME_SAMPLES):
        pcm = pcm48[k:k + OUT_FRAME_SAMPLES]
        if len(pcm) < OUT_FRAME_SAMPLES:
            pcm = np.pad(pcm, (0, OUT_FRAME_SAMPLES - len(pcm)))
        packet = encoder.encode(pcm, k)
        out.append(bytes(packet if packet is not None else OpusPackets.silence(k)))
    return out


def _stamped(data: bytes, pts: int) -> av.Packet[Any]:
    packet = av.Packet(data)
    packet.pts = pts
    packet.time_base = _TIME_BASE
    return packet


class Connection:
    """One call from the caller's side. ``received`` holds the agent's audio with the
    caller-clock time each chunk arrived; ``events`` the server's events, in order."""

    def __init__(self, mic: Mic, *, jitter_frames: int = 0,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.mic = mic
        self.clock = mic.clock
        self.jitter_frames = jitter_frames
        self.on_event = on_event
        self.received = Received(OUT_RATE, [], [])
        self.events: list[dict[str, Any]] = []
        self.call_id = ""
        self.wall_offset = self.clock.wall() - self.clock.now()
        self._pc: RTCPeerConnection | None = None
        self._listener: asyncio.Task[None] | None = None
        self.event_arrived = asyncio.Event()
        self.lost = asyncio.Event()  # the peer connection failed, or the server closed it

    async def open(self, url: str) -> None:
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = pc.createDataChannel("events")
        channel.on("message", self._on_message)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        sender = pc.addTrack(self.mic)
        for t in pc.getTransceivers():
            if t.sender is sender:
                set_jitter_buffer(t.receiver, self.jitter_frames)
        with pinned_host_addresses(["127.0.0.1"] if _is_loopback(url) else None):
            await pc.setLocalDescription(await pc.createOffer())
        answer = await _post_offer(url, pc.localDescription.sdp)
        self.call_id = str(answer.get("call_id", ""))
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

    async def close(self) -> None:
        if self._pc is not None:
            await close_quietly(self._pc)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    def traces(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == "trace"]

    def _on_message(self, message: str) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            return
        self.events.append(event)
        self.event_arrived.set()
        if self.on_event is not None:
            self.on_event(event)

    def _on_state(self) -> None:
        if self._pc is not None and self._pc.connectionState in ("failed", "closed"):
            self.lost.set()

    def _on_track(self, remote: MediaStreamTrack) -> None:
        if remote.kind == "audio" and self._listener is None:
            self._listener = asyncio.create_task(self._listen(remote))

    async def _listen(self, remote: MediaStreamTrack) -> None:
        received, clock = self.received, self.clock
        while True:
            try:
                frame = await remote.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            received.times.append(clock.now())
            received.chunks.append(frame_to_pcm(frame))


async def _post_offer(url: str, sdp: str) -> dict[str, Any]:
    endpoint = url.rstrip("/") + "/api/offer"
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(endpoint, json={"sdp": sdp, "type": "offer"}) as resp:
                body = await resp.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise CallFailed(f"cannot reach {endpoint}: {exc}") from exc
    if resp.status != 200:
        raise CallFailed(f"server refused the call ({resp.status}): {body.get('error', body)}",
                         status=resp.status)
    return dict(body)


def _is_loopback(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")
