"""A caller program: real WebRTC to the server, a WAV as its microphone, a recorder as its ear.

It connects exactly like the web page does (offer over ``POST /api/offer``, Opus
audio, an ``events`` data channel), plays the WAV in real time, records what comes
back with arrival times, and measures each turn's voice-to-voice latency from the
audio (see :mod:`rejoinder.client.measure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from rejoinder.client.measure import Received, Utterance, find_utterances, onset_after
from rejoinder.core.audio import OUT_FRAME_SAMPLES, OUT_RATE, PCM, SAMPLE_RATE, resample
from rejoinder.core.clock import Clock
from rejoinder.core.errors import RejoinderError
from rejoinder.transports.webrtc import (
    close_quietly,
    frame_to_pcm,
    pinned_host_addresses,
    set_jitter_buffer,
)

log = logging.getLogger(__name__)


class CallFailed(RejoinderError):
    pass


class WavTrack(MediaStreamTrack):
    """Plays ``pcm`` (48 kHz mono) in real time after ``lead_s`` of silence, then silence.
    Remembers when each frame was handed to the sender."""

    kind = "audio"

    def __init__(self, pcm48: PCM, lead_s: float, clock: Clock) -> None:
        super().__init__()
        lead = np.zeros(round(lead_s * OUT_RATE), dtype=np.int16)
        self.audio = np.concatenate((lead, pcm48))
        self.lead_s = lead_s
        self.clock = clock
        self.sent_at: list[float] = []
        self.finished = asyncio.Event()
        self._silence = np.zeros(OUT_FRAME_SAMPLES, dtype=np.int16)
        self._time_base = fractions.Fraction(1, OUT_RATE)

    def time_of(self, offset_s: float) -> float | None:
        """Caller-clock time at which the sample ``offset_s`` into the WAV was spoken.

        Like a microphone, frame k is taken to hold the 20 ms of audio *before* it was
        handed to the encoder, so a sample's time is the hand-over time minus the rest
        of its frame: the packetisation delay a real caller has is inside the latency.
        """
        pos = round((offset_s + self.lead_s) * OUT_RATE)
        k, within = divmod(pos, OUT_FRAME_SAMPLES)
        if k >= len(self.sent_at):
            return None
        return self.sent_at[k] - (OUT_FRAME_SAMPLES - within) / OUT_RATE

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        k = len(self.sent_at)
        if k:
            wait = self.sent_at[0] + k * OUT_FRAME_SAMPLES / OUT_RATE - self.clock.now()
            if wait > 0:
                await self.clock.sleep(wait)
        start = k * OUT_FRAME_SAMPLES
        pcm = self.audio[start:start + OUT_FRAME_SAMPLES]
        if len(pcm) < OUT_FRAME_SAMPLES:
            self.finished.set()
            pcm = self._silence if not len(pcm) else np.pad(pcm, (0, OUT_FRAME_SAMPLES - len(pcm)))
        self.sent_at.append(self.clock.now())
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = start
        frame.time_base = self._time_base
        return frame


@dataclass
class TurnResult:
    index: int
    eos: float                       # caller clock
    v2v_ms: float | None             # None: no reply before the next utterance
    server: dict[str, Any] | None    # the server's turn record joined to this utterance
    user_text: str = ""
    agent_text: str = ""


@dataclass
class CallResult:
    call_id: str
    turns: list[TurnResult]
    received: Received
    events: list[dict[str, Any]] = field(default_factory=list)

    def latencies(self) -> list[float]:
        return [t.v2v_ms for t in self.turns if t.v2v_ms is not None]


async def place_call(url: str, pcm16k: PCM, *, lead_s: float = 1.0, tail_s: float = 20.0,
                     min_gap_s: float = 0.7, jitter_frames: int = 0,
                     on_event: Callable[[dict[str, Any]], None] | None = None) -> CallResult:
    """Call the server at ``url`` and play ``pcm16k``; return per-turn measurements.

    ``jitter_frames``: the caller's own jitter buffer (20 ms frames). The default 0
    timestamps agent audio as it *arrives* (design.md's definition); a positive value
    adds the playout delay a buffering client would have.

    After the WAV ends, waits until the server has reported as many turns as the WAV
    has utterances (or ``tail_s`` seconds), plus time for the last reply to play.
    """
    clock = Clock()
    utterances = find_utterances(pcm16k, SAMPLE_RATE, min_gap_s=min_gap_s)
    if not utterances:
        raise CallFailed("the WAV has no speech louder than -40 dBFS")
    track = WavTrack(resample(pcm16k, SAMPLE_RATE, OUT_RATE), lead_s, clock)
    received = Received(OUT_RATE, [], [])
    events: list[dict[str, Any]] = []
    turns_done = asyncio.Event()

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    channel = pc.createDataChannel("events")

    @channel.on("message")
    def _on_message(message: str) -> None:
        try:
            event = json.loads(message)
        except ValueError:
            return
        event["_t"] = clock.now()
        events.append(event)
        if on_event is not None:
            on_event(event)
        if sum(1 for e in events if e.get("type") == "trace") >= len(utterances):
            turns_done.set()

    listener: asyncio.Task[None] | None = None

    @pc.on("track")
    def _on_track(remote: MediaStreamTrack) -> None:
        nonlocal listener
        if remote.kind == "audio" and listener is None:
            listener = asyncio.create_task(_listen(remote, received, clock))

    sender = pc.addTrack(track)
    for t in pc.getTransceivers():
        if t.sender is sender:
            set_jitter_buffer(t.receiver, jitter_frames)
    try:
        with pinned_host_addresses(["127.0.0.1"] if _is_loopback(url) else None):
            await pc.setLocalDescription(await pc.createOffer())
        answer = await _post_offer(url, pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await track.finished.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(tail_s):
                await turns_done.wait()
        # Let the last reply finish playing: wait for 1.5 s of received silence.
        await _until_quiet(received, clock, quiet_s=1.5, limit_s=tail_s)
    finally:
        await close_quietly(pc)
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
    return _results(answer.get("call_id", "?"), utterances, track, received, events,
                    clock.wall() - clock.now())


async def _listen(remote: MediaStreamTrack, received: Received, clock: Clock) -> None:
    while True:
        try:
            frame = await remote.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, av.AudioFrame)
        received.times.append(clock.now())
        received.chunks.append(frame_to_pcm(frame))


async def _until_quiet(received: Received, clock: Clock, quiet_s: float, limit_s: float) -> None:
    deadline = clock.now() + limit_s
    while clock.now() < deadline:
        loud = received.loud_times()
        last = float(loud[-1]) if loud.size else -math.inf
        if clock.now() - last >= quiet_s:
            return
        await clock.sleep(0.1)


async def _post_offer(url: str, sdp: str) -> dict[str, Any]:
    endpoint = url.rstrip("/") + "/api/offer"
    async with aiohttp.ClientSession() as session:
        try:
            async with session.post(endpoint, json={"sdp": sdp, "type": "offer"}) as resp:
                body = await resp.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise CallFailed(f"cannot reach {endpoint}: {exc}") from exc
    if resp.status != 200:
        raise CallFailed(f"server refused the call ({resp.status}): {body.get('error', body)}")
    return dict(body)


def _is_loopback(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")


def _results(call_id: str, utterances: list[Utterance], track: WavTrack, received: Received,
             events: list[dict[str, Any]], offset: float) -> CallResult:
    """Join what was played, what was heard and what the server reported.

    Server turns are matched to utterances by end-of-speech time (both clocks are
    wall clocks here: caller and server on one host, or NTP-synced hosts).
    """
    loud = received.loud_times()
    traces = [e for e in events if e.get("type") == "trace"]
    turns: list[TurnResult] = []
    for i, u in enumerate(utterances):
        eos = track.time_of(u.end_s)
        if eos is None:
            continue
        nxt = track.time_of(utterances[i + 1].start_s) if i + 1 < len(utterances) else None
        onset = onset_after(loud, eos, until=nxt if nxt is not None else math.inf)
        server = _nearest_trace(traces, eos + offset)
        turn = server.get("turn") if server else None
        turns.append(TurnResult(
            index=i + 1, eos=eos,
            v2v_ms=None if onset is None else round((onset - eos) * 1000.0, 1),
            server=server,
            user_text=" ".join(str(e["text"]) for e in events
                               if e.get("type") == "user" and e.get("turn") == turn),
            agent_text=" ".join(str(e["text"]) for e in events
                                if e.get("type") == "agent" and e.get("turn") == turn),
        ))
    return CallResult(call_id, turns, received, events)


def _nearest_trace(traces: list[dict[str, Any]], eos_wall: float) -> dict[str, Any] | None:
    best, best_d = None, 1.0
    for t in traces:
        wall = t.get("speech_end_wall")
        if isinstance(wall, (int, float)) and abs(wall - eos_wall) < best_d:
            best, best_d = t, abs(wall - eos_wall)
    return best
