"""WebRTC with aiortc: audio in and out of one peer connection, and its event channel.

- :class:`AgentTrack` is the outgoing track: aiortc's sender pulls it, it paces
  itself at 20 ms per frame and hands over whatever the playout has (or silence).
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
from collections.abc import AsyncIterator, Iterator, Sequence

import aioice.ice
import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_gt

from rejoinder.core.audio import OUT_FRAME_SAMPLES, OUT_RATE, PCM, SAMPLE_RATE, Resampler
from rejoinder.core.clock import Clock
from rejoinder.turn.playout import Playout

log = logging.getLogger(__name__)

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


class InOrderBuffer:
    """A zero-delay "jitter buffer" for audio: each packet is decoded the moment it
    arrives; a packet older than one already released is late and dropped (the decoder
    conceals the gap). For Opus, one packet is one frame, so nothing needs assembling."""

    capacity = 16

    def __init__(self) -> None:
        self._last: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last is not None and not uint16_gt(seq, self._last):
            return False, None
        self._last = seq
        # The receiver stores the depayloaded bytes in ``_data`` before calling add().
        data: bytes = packet._data  # type: ignore[attr-defined]
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def set_jitter_buffer(receiver: RTCRtpReceiver, frames: int) -> None:
    """Hold ``frames`` audio frames before decoding instead of aiortc's fixed 4 (80 ms).

    0 decodes every packet on arrival (:class:`InOrderBuffer`); n >= 1 uses aiortc's
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
    buffer = InOrderBuffer() if frames <= 0 else JitterBuffer(capacity=16, prefetch=frames)
    setattr(receiver, attr, buffer)


def ice_configuration(urls: Sequence[str], username: str = "",
                      credential: str = "") -> RTCConfiguration:
    servers = [RTCIceServer(urls=u, username=username or None, credential=credential or None)
               for u in urls]
    return RTCConfiguration(iceServers=servers)


class AgentTrack(MediaStreamTrack):
    """The agent's voice: 20 ms frames at 48 kHz pulled from a :class:`Playout`.

    Frames leave every 20 ms. While the agent is silent the track waits for the next
    tick *or* for audio, whichever comes first: a reply's first frame goes out the
    moment it exists instead of waiting up to 20 ms for its slot, and the pacing
    continues from there (a talkspurt start, which receivers handle as jitter).
    """

    kind = "audio"

    def __init__(self, playout: Playout, clock: Clock | None = None) -> None:
        super().__init__()
        self.playout = playout
        self.clock = clock or Clock()
        self._next: float | None = None  # when the next frame is due
        self._pts = 0
        self._silence = np.zeros(OUT_FRAME_SAMPLES, dtype=np.int16)
        self._time_base = fractions.Fraction(1, OUT_RATE)
        self._audio = asyncio.Event()
        playout.on_push = self._audio.set

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = self.clock.now()
        if self._next is None:
            self._next = now
        wait = self._next - now
        if wait > 0:
            if self.playout.queued_samples == 0:
                self._audio.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._audio.wait(), wait)
                # Audio arrived early: start the talkspurt now and pace from here.
                self._next = min(self._next, self.clock.now())
            else:
                await self.clock.sleep(wait)
        self._next += OUT_FRAME_SAMPLES / OUT_RATE
        pcm = self.playout.pull()
        if pcm is None:
            pcm = self._silence
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = self._pts
        frame.time_base = self._time_base
        self._pts += OUT_FRAME_SAMPLES
        return frame


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


async def caller_frames(track: MediaStreamTrack) -> AsyncIterator[PCM]:
    """The caller's audio as 16 kHz mono int16 chunks, until the track ends."""
    resampler: Resampler | None = None
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, av.AudioFrame)
        if resampler is None or resampler.in_rate != frame.sample_rate:
            resampler = Resampler(frame.sample_rate, SAMPLE_RATE)
        pcm = resampler(frame_to_pcm(frame))
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
