"""Resampling of the caller's audio (core/audio.py): whole frames at once, and a clean band."""

from __future__ import annotations

import numpy as np
import pytest

from rejoinder.core.audio import OUT_RATE, SAMPLE_RATE, Resampler


def _gain_db(freq: float) -> float:
    r = Resampler(OUT_RATE, SAMPLE_RATE)
    t = np.arange(OUT_RATE) / OUT_RATE
    x = (10_000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    y = np.concatenate([r(x[i:i + 960]) for i in range(0, OUT_RATE, 960)]).astype(float)
    rms = np.sqrt(np.mean(y[200:] ** 2))
    return float(20 * np.log10(rms / (10_000 / np.sqrt(2))))


def test_each_20_ms_frame_comes_out_at_once_and_whole() -> None:
    r = Resampler(OUT_RATE, SAMPLE_RATE)
    assert [len(r(np.zeros(960, np.int16))) for _ in range(4)] == [320] * 4


def test_chunking_does_not_change_the_output() -> None:
    audio = np.random.default_rng(1).integers(-3000, 3000, 9600).astype(np.int16)
    whole = Resampler(OUT_RATE, SAMPLE_RATE)(audio)
    r = Resampler(OUT_RATE, SAMPLE_RATE)
    pieces = np.concatenate([r(audio[i:i + 137]) for i in range(0, len(audio), 137)])
    assert len(whole) == 3200
    assert np.array_equal(whole, pieces)


@pytest.mark.parametrize(("freq", "low", "high"), [
    (300, -0.1, 0.1), (1000, -0.1, 0.1), (4000, -0.1, 0.1), (6500, -1.5, 0.0),
    (9000, -200, -50), (12_000, -200, -50), (20_000, -200, -50),  # would alias
])
def test_speech_band_passes_and_what_would_alias_is_removed(freq, low, high) -> None:
    assert low <= _gain_db(freq) <= high


def test_other_ratios_use_soxr() -> None:
    r = Resampler(22_050, OUT_RATE)
    out = np.concatenate([r(np.zeros(2205, np.int16)), r(np.zeros(0, np.int16), last=True)])
    assert abs(len(out) - 4800) <= 1
