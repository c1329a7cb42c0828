"""The caller's mic with packets encoded beforehand: it sends exactly what a mic that
encodes as it goes would send, at the same times, and falls back to encoding where the
prepared frames no longer match the queued audio."""

from __future__ import annotations

import asyncio

import numpy as np

from rejoinder.client.connection import Mic, encode_frames
from rejoinder.core.audio import OUT_FRAME_SAMPLES, OUT_RATE
from rejoinder.testing.virtual_time import run_virtual


def _speech(seconds: float, seed: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * OUT_RATE)) / OUT_RATE
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (3000 * np.sin(2 * np.pi * 220 * t) + 800 * noise).astype(np.int16)


async def _send(mic: Mic, frames: int) -> list[tuple[bytes, int]]:
    out = []
    for _ in range(frames):
        packet = await mic.recv()
        out.append((bytes(packet), int(packet.pts or 0)))
    return out


def test_prepared_packets_are_the_ones_encoding_would_send() -> None:
    pcm = _speech(0.31)  # 15.5 frames: the last one padded

    async def both() -> tuple[list[tuple[bytes, int]], list[tuple[bytes, int]], Mic, Mic]:
        live, prepared = Mic(), Mic()
        await asyncio.gather(_send(live, 3), _send(prepared, 3))  # some silence first
        assert live.play(pcm) == prepared.play(pcm, encode_frames(pcm)) == 3 * OUT_FRAME_SAMPLES
        a, b = await asyncio.gather(_send(live, 20), _send(prepared, 20))
        return a, b, live, prepared

    a, b, live, prepared = run_virtual(both())
    assert a == b  # bytes and timestamps
    assert live.sent_at == prepared.sent_at
    sample = 3 * OUT_FRAME_SAMPLES + 100
    assert live.time_of(sample) == prepared.time_of(sample) is not None
    assert len(encode_frames(pcm)) == 16


def test_audio_queued_after_a_partial_frame_is_encoded_as_sent() -> None:
    first, second = _speech(0.05, 1), _speech(0.04, 2)  # 2.5 frames, then 2 frames
    prepared = encode_frames(first)

    async def play() -> list[tuple[bytes, int]]:
        mic = Mic()
        mic.play(first, prepared)
        mic.play(second)
        sent = await _send(mic, 6)
        assert mic.idle.is_set()
        return sent

    sent = run_virtual(play())
    # The two whole frames go as prepared; the third holds the end of the first audio
    # and the start of the second, so its prepared (zero-padded) packet must not go.
    assert [p for p, _ in sent[:2]] == prepared[:2]
    assert sent[2][0] != prepared[2]
    assert [pts for _, pts in sent] == [k * OUT_FRAME_SAMPLES for k in range(6)]
