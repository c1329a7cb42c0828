"""Levels: the level gate (turn/level.py) and the VAD skipping digital silence."""

from __future__ import annotations

import numpy as np

from rejoinder.providers.base import VADStream
from rejoinder.testing.loopback import tone
from rejoinder.turn.level import LevelGate


def frame(dbfs: float) -> np.ndarray:
    return tone(0.02, amplitude=np.sqrt(2) * 10 ** (dbfs / 20))


def test_audible_above_the_threshold_on_a_quiet_line() -> None:
    gate = LevelGate(-45.0)
    assert gate.audible(frame(-15))  # the utterance so far peaks at -15 dBFS
    assert gate.audible(frame(-43)) and not gate.audible(frame(-47))
    for _ in range(50):
        gate.silence(frame(-70))
    assert gate.audible(frame(-43)) and not gate.audible(frame(-47))


def test_a_quiet_talker_is_judged_20_db_under_their_peak() -> None:
    gate = LevelGate(-45.0)
    assert gate.audible(frame(-35))
    assert gate.audible(frame(-53)) and not gate.audible(frame(-57))
    gate.new_utterance()
    assert gate.audible(frame(-15))
    assert not gate.audible(frame(-47))


def test_a_noisy_line_needs_6_db_over_its_floor() -> None:
    gate = LevelGate(-45.0)
    for _ in range(50):
        gate.silence(frame(-33))
    assert gate.audible(frame(-15))
    assert not gate.audible(frame(-28)) and gate.audible(frame(-26))


def test_loud_frames_the_vad_misses_at_an_onset_do_not_lift_the_floor() -> None:
    gate = LevelGate(-80.0)  # a low threshold, so that the floor decides
    assert gate.audible(frame(-15))
    for _ in range(50):
        gate.silence(frame(-60))
    for _ in range(5):  # the first 100 ms of a word, before the VAD hears it
        gate.silence(frame(-15))
    assert gate.audible(frame(-53)) and not gate.audible(frame(-55))
    # The floor only rises 2.5 dB a second: 2 s of a new -30 dBFS noise lifts it to ~-55.
    for _ in range(100):
        gate.silence(frame(-30))
    assert gate.audible(frame(-47)) and not gate.audible(frame(-50))


def test_low_rumble_is_not_speech() -> None:
    """Levels are measured above ~100 Hz, as the caller measures its own end of speech
    (client/measure.highpass): a recording's rumble is not the caller talking."""
    gate = LevelGate(-45.0)
    assert gate.audible(frame(-15))
    for start in range(0, 800, 80):  # wherever the frame falls in the rumble's cycle
        rumble = tone(0.07, freq=20.0, amplitude=np.sqrt(2) * 10 ** (-30 / 20))[start:][:320]
        assert not gate.audible(rumble) and not gate.loud(rumble)
    hum = tone(0.02, freq=150.0, amplitude=np.sqrt(2) * 10 ** (-43 / 20))
    assert gate.audible(hum) and gate.loud(frame(-43))
    # A DC offset is not sound either.
    assert not gate.loud(np.full(320, 3000, dtype=np.int16))


class _Counting(VADStream):
    window = 320

    def __init__(self) -> None:
        super().__init__()
        self.asked = self.resets = 0

    def _probability(self, window: np.ndarray) -> float:
        self.asked += 1
        return 1.0

    def _reset(self) -> None:
        self.resets += 1


def test_the_vad_model_is_not_run_on_digital_silence() -> None:
    vad = _Counting()
    assert vad.push(frame(-30)) == 1.0
    quiet = np.full(320, VADStream.SILENT_PEAK, dtype=np.int16)
    for _ in range(VADStream.STALE_WINDOWS - 1):
        assert vad.push(quiet) == 0.0
    assert vad.push(frame(-30)) == 1.0 and vad.resets == 0  # a short gap: state kept
    for _ in range(VADStream.STALE_WINDOWS):
        vad.push(-quiet)
    assert vad.push(frame(-30)) == 1.0 and vad.resets == 1  # a long one: state reset
    assert (vad.asked, vad.skipped, vad.windows) == (3, 2 * VADStream.STALE_WINDOWS - 1,
                                                     2 * VADStream.STALE_WINDOWS + 2)
    assert vad.push(np.full(320, VADStream.SILENT_PEAK + 1, dtype=np.int16)) == 1.0
    assert vad.push(np.full(320, -32768, dtype=np.int16)) == 1.0  # full scale is not silence
