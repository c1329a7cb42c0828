"""The level gate (turn/level.py): which frames of speech are audible on this line."""

from __future__ import annotations

import numpy as np

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
