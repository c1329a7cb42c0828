"""Per-frame work cut for cost per call, with the same results: the level gate measures a
frame once, the decimator does not filter the same chunk over and over (exactly what filtering it
gives), and a new call's VAD instance is made before the call needs it."""

from __future__ import annotations

import types

import numpy as np
import pytest
from aiortc.rtp import RtpPacket

import rejoinder.turn.level as level
from rejoinder.core.audio import OUT_FRAME_SAMPLES, OUT_RATE, SAMPLE_RATE, _Decimator
from rejoinder.transports.webrtc import InlineDecoder, OpusPackets, frame_to_pcm
from rejoinder.turn.level import LevelGate


def _tone(samples: int, amplitude: float, seed: int) -> np.ndarray:
    t = np.arange(samples) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(samples)
    return (amplitude * (np.sin(2 * np.pi * 300 * t) + 0.1 * noise)).astype(np.int16)


def test_the_level_gate_measures_each_frame_once(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = []
    real = level._power

    def counting(frame: np.ndarray) -> float:
        measured.append(frame)
        return real(frame)

    monkeypatch.setattr(level, "_power", counting)
    gate, reference = LevelGate(-45.0), LevelGate(-45.0)
    frames = [_tone(320, a, i) for i, a in enumerate((0, 30, 3000, 8000, 200, 20, 5000))]
    for frame in frames:  # as the engine asks: loud(), then audible() or silence()
        speech = frame.std() > 100
        want_loud = reference.loud(frame.copy())  # a new array each time: measured anew
        copy = frame.copy()
        want = reference.audible(copy) if speech else reference.silence(copy)
        measured.clear()
        assert gate.loud(frame) == want_loud
        assert (gate.audible(frame) if speech else gate.silence(frame)) == want
        assert len(measured) == 1  # once, not once per question


def _split(pcm: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    out, at, k = [], 0, 0
    while at < len(pcm):
        out.append(pcm[at:at + sizes[k % len(sizes)]])
        at += sizes[k % len(sizes)]
        k += 1
    return out


def test_a_repeated_chunk_decimates_to_what_filtering_it_gives() -> None:
    speech = (_tone(OUT_RATE // 4, 6000, 1), _tone(OUT_RATE // 5, 9000, 2))
    hiss = np.random.default_rng(3).integers(-2, 3, 960).astype(np.int16)  # decoded "silence"
    zeros = np.zeros(960, dtype=np.int16)
    chunks = ([zeros] * 4 + _split(speech[0], [960]) + [hiss] * 6 + _split(speech[1], [480, 961])
              + [hiss.copy() for _ in range(5)] + [zeros] * 3 + [hiss[:31]] * 4
              + _split(speech[0], [61, 62, 63]) + [np.concatenate((hiss, hiss[:1]))] * 5)
    fast, filtered = _Decimator(3), _Decimator(3)
    reused = 0
    for chunk in chunks:
        last = fast._last
        reused += (last is not None and np.array_equal(last[0], chunk)
                   and fast._repeats >= 1 and not fast._skip_moved)
        got = fast(chunk)
        filtered._repeats = 0  # always through the filter
        want = filtered(chunk)
        assert got.dtype == np.int16 and np.array_equal(got, want)
        assert fast._skip == filtered._skip
    assert reused >= 10  # of the 23 repeated chunks: the first two of each run are filtered
    buffer = hiss.copy()  # a caller that refills one buffer gets each chunk filtered
    r, reference = _Decimator(3), _Decimator(3)
    for fill in (hiss, hiss, hiss, hiss, speech[0][:960], speech[0][960:1920]):
        buffer[:] = fill
        reference._repeats = 0
        assert np.array_equal(r(buffer), reference(fill.copy()))


def test_a_calls_vad_instance_is_made_before_the_call_needs_it() -> None:
    from rejoinder.providers.local.silero import SileroOptions, SileroVAD

    vad = SileroVAD(SileroOptions(preload=1))
    try:
        first = vad.stream()  # takes the preloaded instance: a spare is made meanwhile
        assert vad.spare_ready(timeout=30.0)

        def on_the_loop() -> None:
            raise AssertionError("a stream made its instance itself")

        vad._new = on_the_loop  # type: ignore[method-assign]
        second = vad.stream()
        assert second.push(np.zeros(512, dtype=np.int16)) == 0.0
        first.close()
        second.close()
    finally:
        vad.close()


class _Queue(list[object]):
    def put_nowait(self, item: object) -> None:
        self.append(item)


class _Receiver:
    def __init__(self) -> None:
        self._track = types.SimpleNamespace(_queue=_Queue())


def _decoded(packets: list[bytes], skip: bool) -> tuple[list[np.ndarray], int]:
    receiver = _Receiver()
    decoder = InlineDecoder(receiver)  # type: ignore[arg-type]
    calls = 0
    codec = decoder._codec

    class Counting:
        def decode(self, packet: object) -> object:
            nonlocal calls
            calls += 1
            return codec.decode(packet)

    decoder._codec = Counting()
    for seq, data in enumerate(packets):
        if not skip:
            decoder._settled = False
        packet = RtpPacket(sequence_number=seq, timestamp=seq * OUT_FRAME_SAMPLES)
        packet._data = data  # type: ignore[attr-defined]  # as the receiver sets it
        decoder.add(packet)
    return [frame_to_pcm(f).copy() for f in receiver._track._queue], calls


def test_a_repeated_silence_packet_is_not_decoded_again_and_gives_the_same_audio() -> None:
    t = np.arange(OUT_RATE) / OUT_RATE
    voice = (6000 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.int16)
    encoder = OpusPackets()
    speech = [bytes(p) for k in range(0, 960 * 30, 960)
              if (p := encoder.encode(voice[k:k + 960], k)) is not None]
    silence = bytes(OpusPackets.silence(0))  # what the bench's mic (and a muted one) sends
    packets = speech[:15] + [silence] * 40 + speech[15:] + [silence] * 10
    skipping, decodes = _decoded(packets, skip=True)
    every, all_decodes = _decoded(packets, skip=False)
    assert all_decodes == len(packets)
    assert decodes < len(packets) - 40  # most of the silence was not decoded
    assert len(skipping) == len(every) == len(packets)
    for a, b in zip(skipping, every, strict=True):
        assert np.array_equal(a, b)  # the silence, and the speech after it, bit for bit
