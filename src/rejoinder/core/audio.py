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
    """Streaming mono int16 resampler.

    Down by a whole factor (48 -> 16 kHz, the caller's audio) it is a polyphase FIR
    decimator: every chunk comes out at once and whole (960 samples in, 320 out), 0.7 ms
    late. soxr's streaming resampler, used for every other ratio, holds back up to a
    chunk (at HQ it gave 0 and ~490 samples on alternate 20 ms frames): on the caller's
    audio that delayed every decision about speech by up to 20 ms.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None
        self._decimator = None
        if in_rate != out_rate and in_rate % out_rate == 0:
            self._decimator = _Decimator(in_rate // out_rate)
        elif in_rate != out_rate:
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16",
                                               quality="HQ")

    def __call__(self, pcm: PCM, last: bool = False) -> PCM:
        if self._decimator is not None:
            return self._decimator(pcm)
        if self._stream is None:
            return pcm
        out: PCM = self._stream.resample_chunk(pcm, last=last)
        return out


class _Decimator:
    """Low-pass (windowed sinc, 63 taps, cut-off 0.9 x the new Nyquist rate) and keep
    every ``factor``-th sample, carrying the filter's history between chunks."""

    TAPS = 63

    def __init__(self, factor: int) -> None:
        self.factor = factor
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        cutoff = 0.9 / factor  # of the input's Nyquist rate
        h = cutoff * np.sinc(cutoff * n) * np.hamming(self.TAPS)
        self._taps = (h / h.sum()).astype(np.float32)[::-1].copy()
        self._history = np.zeros(self.TAPS - 1, dtype=np.float32)
        self._skip = 0  # input samples to pass over before the next output sample
        # The same chunk over and over (a listening caller's steady silence): from its third
        # copy on, the filter's state is what it was a chunk before, so the output is too.
        self._last: tuple[PCM, PCM] | None = None  # the last chunk in, and what came out
        self._repeats = 0  # how many chunks before the last one were the same as it
        self._skip_moved = True  # the last chunk changed the phase

    def __call__(self, pcm: PCM) -> PCM:
        keep = self.TAPS - 1
        last = self._last
        if last is not None and len(pcm) >= keep and np.array_equal(pcm, last[0]):
            if self._repeats >= 1 and not self._skip_moved:
                return last[1].copy()  # exactly what filtering it again gives (tested)
            self._repeats += 1
        else:
            self._repeats = 0
        x = np.empty(keep + len(pcm), dtype=np.float32)
        x[:keep] = self._history
        x[keep:] = pcm
        count = max(0, (len(x) - self.TAPS - self._skip) // self.factor + 1)
        step = x.strides[0]
        windows = np.lib.stride_tricks.as_strided(
            x[self._skip:], shape=(count, self.TAPS), strides=(self.factor * step, step),
            writeable=False)
        moved = count * self.factor - (len(x) - keep)
        self._skip += moved
        self._skip_moved = moved != 0
        self._history = x[len(x) - keep:]
        out = np.ascontiguousarray(windows) @ self._taps
        np.clip(out, -32768, 32767, out=out)
        pcm16: PCM = np.rint(out, out=out).astype(np.int16)
        self._last = (pcm.copy(), pcm16)  # a copy: the caller may reuse its buffer
        return pcm16.copy()


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
