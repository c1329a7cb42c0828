"""What the caller measures, from the audio itself.

End of speech (EoS) is the last speech sample the caller sent; see the definitions below.

- The caller's utterances are found in the audio it plays: 10 ms windows louder
  than a threshold both as played and after a 100 Hz high-pass (low rumble is not
  speech; the filter's own spill into silent windows is not either), merged across
  gaps shorter than ``min_gap_s``. End of speech
  (EoS) is the end of the last loud window of an utterance.
- Agent audio is a list of received chunks with their arrival times. A sample's
  arrival time is its chunk's arrival plus its offset inside the chunk.
- Voice-to-voice latency of a turn: from its EoS to the first loud agent sample
  that arrives after EoS, before the caller's next utterance starts. If the agent
  was still audible at EoS (an earlier reply running on), the onset is the first
  loud sample after that audio went quiet for ``quiet_s``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rejoinder.core.audio import PCM


@dataclass(frozen=True)
class Utterance:
    start_s: float  # offset in the played audio
    end_s: float    # end of speech, offset in the played audio


def highpass(pcm: PCM, rate: int, cutoff_hz: float = 100.0) -> np.ndarray:
    """Zero-phase high-pass (float32): remove content below ``cutoff_hz``.

    Recordings often end in low rumble loud enough to pass for speech; Opus in voice
    mode removes it, so the server never hears it. Measuring EoS on the raw audio
    would put it too late and make latency look shorter than it is.
    """
    spectrum = np.fft.rfft(pcm.astype(np.float32))
    freqs = np.fft.rfftfreq(len(pcm), 1.0 / rate)
    # A raised-cosine edge from cutoff/2 to cutoff: a brick wall would ring around
    # abrupt onsets and blur them across windows.
    gain = np.clip((freqs - cutoff_hz / 2) / (cutoff_hz / 2), 0.0, 1.0)
    spectrum *= 0.5 - 0.5 * np.cos(np.pi * gain)
    return np.fft.irfft(spectrum, n=len(pcm)).astype(np.float32)


def _window_dbfs(x: np.ndarray, n: int) -> np.ndarray:
    frames = x.reshape(n, -1)
    rms = np.sqrt(np.mean(frames * frames, axis=1)) / 32768.0
    with np.errstate(divide="ignore"):
        out: np.ndarray = 20.0 * np.log10(np.maximum(rms, 1e-12))
    return out


def find_utterances(pcm: PCM, rate: int, *, threshold_dbfs: float = -40.0,
                    min_gap_s: float = 0.7, min_len_s: float = 0.15) -> list[Utterance]:
    win = rate // 100
    n = len(pcm) // win
    if n == 0:
        return []
    loud = np.flatnonzero((_window_dbfs(pcm[: n * win].astype(np.float32), n) > threshold_dbfs)
                          & (_window_dbfs(highpass(pcm[: n * win], rate), n) > threshold_dbfs))
    out: list[Utterance] = []
    if loud.size == 0:
        return out
    start = prev = int(loud[0])
    gap = round(min_gap_s * 100)
    for i in loud[1:]:
        i = int(i)
        if i - prev > gap:
            out.append(Utterance(start / 100, (prev + 1) / 100))
            start = i
        prev = i
    out.append(Utterance(start / 100, (prev + 1) / 100))
    return [u for u in out if u.end_s - u.start_s >= min_len_s]


@dataclass
class Received:
    """Agent audio as it arrived: chunks and the caller-clock time each arrived."""

    rate: int
    times: list[float]
    chunks: list[PCM]

    def loud_times(self, threshold: int = 500) -> np.ndarray:
        """Arrival times of every loud sample, ascending."""
        out = []
        for t, c in zip(self.times, self.chunks, strict=True):
            idx = np.flatnonzero(np.abs(c.astype(np.int32)) >= threshold)
            if idx.size:
                out.append(t + idx / self.rate)
        return np.concatenate(out) if out else np.zeros(0)


def onset_after(loud: np.ndarray, eos: float, until: float = math.inf,
                quiet_s: float = 0.15) -> float | None:
    """First loud arrival after ``eos`` that starts a new burst, before ``until``."""
    i = int(np.searchsorted(loud, eos, side="right"))
    if i >= loud.size:
        return None
    # An earlier reply still audible at EoS: skip until a quiet stretch of quiet_s.
    if i > 0 and eos - loud[i - 1] < quiet_s:
        while i < loud.size and loud[i] - loud[i - 1] < quiet_s:
            i += 1
        if i >= loud.size:
            return None
    t = float(loud[i])
    return t if t < until else None


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN when empty."""
    if not values:
        return math.nan
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def summarize(values: Sequence[float]) -> dict[str, float]:
    return {"n": float(len(values)), "p50": percentile(values, 50),
            "p95": percentile(values, 95), "max": max(values) if values else math.nan}
