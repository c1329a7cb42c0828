"""The embedded models on phone audio (core/telephony.phone_path), with the real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rejoinder.bench.narrowband import normalise
from rejoinder.core.audio import FRAME_SAMPLES, read_wav, split_frames
from rejoinder.core.errors import ConfigError
from rejoinder.core.telephony import phone_path
from rejoinder.providers.local.silero import SileroOptions, SileroVAD
from rejoinder.testing.wer import word_errors

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
DASHWOOD = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav"
DASHWOOD_TEXT = ("and mister john dashwood had then leisure to consider how much there might be "
                 "prudently in his power to do for them")
CARDS = Path("/usr/share/pocketsphinx/test/data/cards/005.wav")  # eight of spades ...


def test_the_vad_takes_only_its_two_rates() -> None:
    with pytest.raises(ConfigError):
        SileroOptions(sample_rate=22_050)


@pytest.mark.slow
def test_whisper_reads_a_librivox_sentence_through_the_phone_path() -> None:
    from rejoinder.providers.local.whisper import WhisperSTT

    stt = WhisperSTT()
    try:
        text = stt.decode(phone_path(read_wav(DASHWOOD)))
    finally:
        stt.close()
    # 0 of 22 words wrong when measured (bench/narrowband.py), as at 16 kHz.
    assert word_errors(normalise(DASHWOOD_TEXT), normalise(text)) <= 2


def _last_voiced(rate: int, pcm: np.ndarray) -> int:
    vad = SileroVAD(SileroOptions(sample_rate=rate))
    stream = vad.stream()
    try:
        flags = [stream.push(f) >= 0.5 for f in split_frames(pcm, FRAME_SAMPLES)]
    finally:
        stream.close()
        vad.close()
    return len(flags) - flags[::-1].index(True)


@pytest.mark.slow
def test_the_8_khz_vad_hears_a_phone_callers_last_word_to_its_end() -> None:
    """On this recording the 16 kHz mode, on the phone path, ends the speech 8 frames
    (160 ms) before it does on the recording; the 8 kHz mode within a frame of it."""
    pcm = read_wav(CARDS)
    reference = _last_voiced(16_000, pcm)
    assert abs(_last_voiced(8000, phone_path(pcm)) - reference) <= 1
