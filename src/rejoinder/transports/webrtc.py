"""WebRTC with aiortc: audio in and out of one peer connection, and its event channel.

- :class:`WebRTCTransport` is the transport contract (:mod:`rejoinder.transports.base`)
  over one peer connection: the offer/answer, the caller's track, the ``events`` data
  channel, connection state; a sample counts as heard once it is pulled and sent.
- :class:`AgentTrack` is the outgoing track: aiortc's sender pulls it, it paces
  itself at 20 ms per frame and hands over whatever the playout has, Opus-encoded.
  While the agent is silent it sends nothing (discontinuous transmission).
- :class:`OpusPackets` encodes on the event loop; :class:`InlineDecoder` decodes each
  incoming packet the moment it arrives, also on the loop. aiortc would hand every
  20 ms frame to a thread and back, both ways; on a loaded server those hand-offs
  cost more CPU than the codec (profiled: see docs/benchmarks.md).
- :func:`caller_frames` turns the incoming track into 16 kHz mono PCM frames.
- :func:`pinned_host_addresses` limits which local addresses ICE offers as host
  candidates (aioice has no option for it, and leaves 127.0.0.1 out).
- :func:`ice_configuration` builds aiortc's configuration: no STUN unless asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fractions
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

import aioice.ice
import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_gt

from rejoinder.core.audio import OUT_FRAME_SAMPLES, OUT_RATE, PCM, SAMPLE_RATE, Resampler
from rejoinder.core.clock import Clock
from rejoinder.core.errors import SignalingError
from rejoinder.transports.base import CallSide
from rejoinder.turn.playout import Playout

log = logging.getLogger(__name__)

_TIME_BASE = fractions.Fraction(1, OUT_RATE)

_pinned: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "pinned_host_addresses", default=None)
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    pinned = _pinned.get()
    if pinned is None:
        return _original_get_host_addresses(use_ipv4, use_ipv6)
    return list(pinned)


aioice.ice.get_host_addresses = _get_host_addresses


@contextlib.contextmanager
def pinned_host_addresses(addresses: Sequence[str] | None) -> Iterator[None]:
    """ICE gathering inside this block offers exactly ``addresses`` as host candidates
    (None or empty: aioice's default, every non-loopback address)."""
    token = _pinned.set(tuple(addresses) if addresses else None)
    try:
        yield
    finally:
        _pinned.reset(token)


class InlineDecoder:
    """A zero-delay "jitter buffer" that also decodes: each packet is decoded the moment
    it arrives, on the event loop, and the frame goes straight to the receiver's track.
    A packet older than one already decoded is late and dropped (Opus conceals the gap).
    For Opus one packet is one frame, so nothing needs assembling. aiortc's receiver
    gets nothing back, so its decoder thread stays idle (it still ends the track).

    A caller who listens with a muted or gated microphone sends the same silence packet
    50 times a second. Once two of them in a row have decoded to the same near-silent
    frame (peak <= ``QUIET_PEAK``), the decoder has settled: further copies are not
    decoded, the same frame goes on (~50 µs a frame saved). The audio is bit for bit what
    decoding every copy gives, the speech after them included (tested).
    """

    QUIET_PEAK = 16  # -66 dBFS, as the VAD's digital silence

    capacity = 16

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self._receiver = receiver
        self._last: int | None = None
        self._codec = _opus_context("r")
        self._errors = 0
        self._last_decoded: tuple[bytes, av.AudioFrame] | None = None  # packet, its frame
        self._settled = False  # the last packet, repeated, decodes to its frame again

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None and not uint16_gt(seq, self._last):
            return False, None
        self._last = seq
        track = self._receiver._track
        if track is None:
            return False, None
        # The receiver stores the depayloaded bytes in ``_data`` before calling add().
        data: bytes = packet._data  # type: ignore[attr-defined]
        last = self._last_decoded
        if self._settled and last is not None and last[0] == data:
            track._queue.put_nowait(last[1])
            return False, None
        encoded = av.Packet(data)
        encoded.pts = packet.timestamp
        encoded.time_base = _TIME_BASE
        try:
            frames = self._codec.decode(encoded)
        except av.FFmpegError as exc:
            self._errors += 1
            if self._errors in (1, 10, 100, 1000):
                log.warning("undecodable audio packet (%d so far): %s", self._errors, exc)
            self._last_decoded, self._settled = None, False
            return False, None
        self._last_decoded = (data, frames[0]) if len(frames) == 1 else None
        self._settled = (last is not None and self._last_decoded is not None
                         and last[0] == data and _same_quiet(last[1], frames[0]))
        for frame in frames:
            track._queue.put_nowait(frame)
        return False, None


def _same_quiet(a: av.AudioFrame, b: av.AudioFrame) -> bool:
    x, y = a.to_ndarray(), b.to_ndarray()
    return bool(x.shape == y.shape and np.array_equal(x, y)
                and x.max() <= InlineDecoder.QUIET_PEAK and x.min() >= -InlineDecoder.QUIET_PEAK)


class OpusPackets:
    """Mono Opus (VoIP mode) encoded on the caller's thread. At libopus' default
    complexity (10) a 20 ms frame costs ~550 µs here; at 5, ~250 µs, with no audible
    difference for a voice at 32 kbit/s. Mono suits a voice and any Opus decoder."""

    _silent: bytes | None = None  # one frame of digital silence, encoded once

    def __init__(self, bit_rate: int = 32_000, complexity: int = 5) -> None:
        self._codec = _opus_context("w")
        self._codec.bit_rate = bit_rate
        self._codec.options = {"application": "voip", "compression_level": str(complexity)}

    def encode(self, pcm48: PCM, pts: int) -> av.Packet[Any] | None:
        """One 20 ms frame of 48 kHz mono int16 as an Opus packet stamped ``pts``."""
        frame = av.AudioFrame.from_ndarray(pcm48.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = pts
        frame.time_base = _TIME_BASE
        packets = self._codec.encode(frame)
        if not packets:
            return None
        packet: av.Packet[Any] = packets[0]
        packet.pts = pts
        packet.time_base = _TIME_BASE
        return packet

    @classmethod
    def silence(cls, pts: int) -> av.Packet[Any]:
        """A packet of 20 ms of digital silence, without encoding anything (after the
        first): for a sender with nothing to say that still sends every frame."""
        if cls._silent is None:
            packet = cls().encode(np.zeros(OUT_FRAME_SAMPLES, dtype=np.int16), 0)
            assert packet is not None
            cls._silent = bytes(packet)
        out = av.Packet(cls._silent)
        out.pts = pts
        out.time_base = _TIME_BASE
        return out


def _opus_context(mode: Literal["r", "w"]) -> Any:
    codec = av.CodecContext.create("libopus", mode)
    codec.sample_rate = OUT_RATE
    codec.format = "s16"
    codec.layout = "mono"
    if mode == "w":
        codec.time_base = _TIME_BASE
    return codec


def set_jitter_buffer(receiver: RTCRtpReceiver, frames: int) -> None:
    """Hold ``frames`` audio frames before decoding instead of aiortc's fixed 4 (80 ms).

    0 decodes every packet on arrival (:class:`InlineDecoder`); n >= 1 uses aiortc's
    buffer, which releases a frame once n later ones have arrived (n x 20 ms). On a
    call this delay sits on the critical path twice (the server hears the end of
    speech late, the caller hears the reply late), so keep it as low as the network
    allows; raise it where packets arrive out of order. aiortc has no public setting
    for it; this replaces the receiver's buffer before any packet arrives.
    """
    attr = "_RTCRtpReceiver__jitter_buffer"
    if not hasattr(receiver, attr):
        log.warning("aiortc changed: cannot set the jitter buffer; keeping its default")
        return
    buffer = (InlineDecoder(receiver) if frames <= 0
              else JitterBuffer(capacity=16, prefetch=frames))
    setattr(receiver, attr, buffer)


def ice_configuration(urls: Sequence[str], username: str = "",
                      credential: str = "") -> RTCConfiguration:
    servers = [RTCIceServer(urls=u, username=username or None, credential=credential or None)
               for u in urls]
    return RTCConfiguration(iceServers=servers)


class AgentTrack(MediaStreamTrack):
    """The agent's voice: Opus packets of 20 ms of 48 kHz audio from a :class:`Playout`.

    Frames leave every 20 ms while the agent speaks. When it falls silent the track
    sends ``trailing_frames`` of silence (so the caller's decoder ends the sound cleanly
    instead of concealing a loss) and then nothing until the playout has audio again
    (discontinuous transmission: a silent agent costs no encoding, encryption or
    sending). The next talkspurt starts the moment its first frame exists, and the pacing
    continues from there; RTP timestamps follow the clock across the gap, as receivers
    expect of a talkspurt.
    """

    kind = "audio"
    trailing_frames = 5

    def __init__(self, playout: Playout, clock: Clock | None = None) -> None:
        super().__init__()
        self.playout = playout
        self.clock = clock or Clock()
        self._start: float | None = None
        self._next = 0.0   # when the next frame is due
        self._pts = 0      # samples since the start, on the clock
        self._quiet = 0    # silent frames sent in a row
        self._silence = np.zeros(OUT_FRAME_SAMPLES, dtype=np.int16)
        self._encoder = OpusPackets()
        self._audio = asyncio.Event()
        playout.on_push = self._audio.set

    async def recv(self) -> av.Packet[Any]:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            pcm = await self._next_frame()
            packet = self._encoder.encode(pcm, self._pts)
            self._pts += OUT_FRAME_SAMPLES
            if packet is not None:
                return packet

    async def _next_frame(self) -> PCM:
        now = self.clock.now()
        if self._start is None:
            self._start = self._next = now
        if self._quiet >= self.trailing_frames and self.playout.queued_samples == 0:
            while self.playout.queued_samples == 0:  # silent: wait for audio
                self._audio.clear()
                await self._audio.wait()
            self._start_talkspurt()
        elif self._next > now:
            if self.playout.queued_samples == 0:
                self._audio.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._audio.wait(), self._next - now)
                if self.clock.now() < self._next:  # audio arrived early: start it now
                    self._start_talkspurt()
            else:
                await self.clock.sleep(self._next - now)
        self._next += OUT_FRAME_SAMPLES / OUT_RATE
        pcm = self.playout.pull()
        if pcm is None:
            self._quiet += 1
            return self._silence
        self._quiet = 0
        return pcm

    def _start_talkspurt(self) -> None:
        now = self.clock.now()
        self._next = now
        assert self._start is not None
        self._pts = max(self._pts, round((now - self._start) * OUT_RATE))


def frame_to_pcm(frame: av.AudioFrame) -> PCM:
    """A decoded frame as mono int16.

    aiortc decodes Opus to packed stereo s16 even for mono sources (both channels
    equal), so the common case takes the first channel as a strided view: no
    arithmetic per frame. Other layouts are mixed down.
    """
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.name == "s16":
        out: PCM = data.reshape(-1)[::channels] if channels > 1 else data.reshape(-1)
        return out
    if frame.format.is_planar:
        mono = data[0] if channels == 1 else data.mean(axis=0)
    else:
        flat = data.reshape(-1)
        mono = flat if channels == 1 else flat.reshape(-1, channels).mean(axis=1)
    if np.issubdtype(mono.dtype, np.floating) and frame.format.name.startswith("flt"):
        mono = mono * 32767.0
    out = np.clip(mono, -32768, 32767).astype(np.int16)
    return out


async def caller_frames(track: MediaStreamTrack, *,
                        on_frame: Callable[[], None] | None = None) -> AsyncIterator[PCM]:
    """The caller's audio as 16 kHz mono int16 chunks, until the track ends.
    ``on_frame`` is called as each decoded frame arrives (the caller is still there)."""
    resampler: Resampler | None = None
    last: tuple[av.AudioFrame, PCM] | None = None  # a frame the decoder repeats, as samples
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, av.AudioFrame)
        if on_frame is not None:
            on_frame()
        if resampler is None or resampler.in_rate != frame.sample_rate:
            resampler = Resampler(frame.sample_rate, SAMPLE_RATE)
        if last is None or frame is not last[0]:
            last = (frame, frame_to_pcm(frame))
        pcm = resampler(last[1])
        if pcm.size:
            yield pcm


async def close_quietly(pc: object, deadline: float = 2.0) -> None:
    """Close a peer connection, logging (not raising) when it hangs or fails."""
    close = getattr(pc, "close", None)
    if close is None:
        return
    try:
        async with asyncio.timeout(deadline):
            await close()
    except TimeoutError:
        log.error("peer connection did not close within %.1f s", deadline)
    except Exception as exc:
        log.warning("peer connection close failed: %r", exc)


class WebRTCTransport:
    """One caller's peer connection (:class:`~rejoinder.transports.base.Transport`).

    Events wait in a short backlog until the caller's ``events`` channel opens."""

    kind = "webrtc"
    rate = OUT_RATE
    confirms_heard = False  # the caller's jitter buffer is short: sent is heard

    def __init__(self, ice_servers: Sequence[str] = (), ice_username: str = "",
                 ice_credential: str = "", jitter_buffer_frames: int = 0) -> None:
        self.pc = RTCPeerConnection(ice_configuration(ice_servers, ice_username,
                                                      ice_credential))
        self.jitter_buffer_frames = jitter_buffer_frames
        self._call: CallSide | None = None
        self._playout: Playout | None = None
        self._channel: Any = None
        self._backlog: deque[str] = deque(maxlen=200)
        self._media = False

    def start(self, call: CallSide, playout: Playout) -> None:
        self._call, self._playout = call, playout
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, sdp: str, media_addresses: Sequence[str]) -> RTCSessionDescription:
        """Apply the caller's offer and return our answer (ICE gathering included)."""
        assert self._playout is not None, "start() first"
        pc = self.pc
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
            audio[0].sender.replaceTrack(AgentTrack(self._playout))
            set_jitter_buffer(audio[0].receiver, self.jitter_buffer_frames)
            audio[0].direction = "sendrecv"
            with pinned_host_addresses(media_addresses):
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            raise _unusable(exc) from exc
        description: RTCSessionDescription = pc.localDescription
        return description

    @property
    def failed(self) -> bool:
        return bool(self.pc.connectionState == "failed")

    def send_event(self, message: str) -> None:
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(message)
        else:
            self._backlog.append(message)

    async def close(self, deadline_s: float = 2.0) -> None:
        await close_quietly(self.pc, deadline_s)

    # -- aiortc callbacks ---------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self._media or self._call is None:
            return
        self._media = True
        log.info("caller audio track started")
        self._call.on_media(caller_frames(track, on_frame=self._call.on_frame))

    def _on_datachannel(self, channel: Any) -> None:
        self._channel = channel
        channel.on("open", self._flush_backlog)
        if self._call is not None:
            channel.on("message", self._call.on_caller_message)
        if channel.readyState == "open":
            self._flush_backlog()

    def _flush_backlog(self) -> None:
        while self._backlog and self._channel is not None:
            self._channel.send(self._backlog.popleft())

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("connection %s", state)
        if self._call is None:
            return
        if state == "connected":
            self._call.on_connected()
        if state in ("failed", "closed"):
            self._call.on_lost()


def _unusable(exc: Exception) -> SignalingError:
    """aiortc's own words stay in the log; the caller gets a stable message."""
    return SignalingError("bad_offer", "the offer could not be used",
                          detail=f"{type(exc).__name__}: {str(exc)[:200]}")
