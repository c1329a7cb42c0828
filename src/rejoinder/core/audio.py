"""Audio inside the server: 16 kHz mono PCM16 in 20 ms frames (int16 numpy arrays).

Agent audio leaves at 48 kHz (Opus's native rate) so the codec does not resample again.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import soxr

SAMPLE_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 320
OUT_RATE = 48_000
OUT_FRAME_SAMPLES = OUT_RATE * FRAME_MS // 1000  # 960

PCM = np.ndarray  # int16, mono


class Resampler:
    """Streaming mono int16 resampler (soxr keeps its filter state between chunks)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ")
        )

    def __call__(self, pcm: PCM, last: bool = False) -> PCM:
        if self._stream is None:
            return pcm
        out: PCM = self._stream.resample_chunk(pcm, last=last)
        return out


def resample(pcm: PCM, in_rate: int, out_rate: int) -> PCM:
    """One-shot resampling of a whole buffer."""
    if in_rate == out_rate:
        return pcm
    out: PCM = soxr.resample(pcm, in_rate, out_rate, quality="HQ")
    return out.astype(np.int16, copy=False)


def rms_dbfs(pcm: PCM) -> float:
    """Loudness of a chunk in dB relative to full scale (-inf for digital silence)."""
    if pcm.size == 0:
        return float("-inf")
    mean_sq = float(np.mean(np.square(pcm.astype(np.float32))))
    if mean_sq <= 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(mean_sq / (32768.0 * 32768.0)))


def first_loud_sample(pcm: PCM, threshold: int = 300) -> int | None:
    """Index of the first sample whose magnitude reaches ``threshold``, or None."""
    hits = np.flatnonzero(np.abs(pcm.astype(np.int32)) >= threshold)
    return int(hits[0]) if hits.size else None


def read_wav(path: str | Path, rate: int = SAMPLE_RATE) -> PCM:
    """Read a PCM16 WAV (any rate, any channel count) as mono int16 at ``rate``."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels, in_rate = w.getnchannels(), w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return resample(data, in_rate, rate)


def write_wav(path: str | Path, pcm: PCM, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm, dtype=np.int16).tobytes())


def split_frames(pcm: PCM, size: int) -> list[PCM]:
    """Split into frames of ``size`` samples, zero-padding the last one."""
    n = -(-len(pcm) // size)
    padded = np.zeros(n * size, dtype=np.int16)
    padded[: len(pcm)] = pcm
    return [padded[i * size:(i + 1) * size] for i in range(n)]
