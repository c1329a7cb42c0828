"""Caller-side measurement on synthetic audio with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from rejoinder.client.measure import Received, find_utterances, onset_after, percentile
from rejoinder.testing.loopback import script_audio


def test_utterances_and_end_of_speech_are_found_in_the_played_audio():
    audio = script_audio([("silence", 1.0), ("speech", 1.2), ("silence", 0.3),
                          ("speech", 0.5), ("silence", 2.0), ("speech", 0.8),
                          ("silence", 0.05), ("speech", 0.05), ("silence", 1.0)])
    us = find_utterances(audio, 16000, min_gap_s=0.7)
    # The 0.3 s pause is inside an utterance; the 2.0 s gap separates two.
    assert [(u.start_s, u.end_s) for u in us] == [(1.0, 3.0), (5.0, 5.9)]


def _received(rate, times_and_chunks):
    return Received(rate, [t for t, _ in times_and_chunks], [c for _, c in times_and_chunks])


def test_onset_is_the_first_loud_sample_after_eos_with_its_offset_in_the_chunk():
    rate = 1000
    quiet = np.zeros(20, np.int16)
    loud_late = np.zeros(20, np.int16)
    loud_late[7] = 5000  # 7 ms into the chunk
    rec = _received(rate, [(1.00, quiet), (1.02, quiet), (1.04, loud_late), (1.06, quiet)])
    loud = rec.loud_times()
    assert onset_after(loud, eos=0.5) == pytest.approx(1.047)
    assert onset_after(loud, eos=0.5, until=1.0) is None  # the next utterance began first
    assert onset_after(loud, eos=1.05) is None


def test_a_reply_still_playing_at_eos_is_not_the_next_onset():
    rate = 1000
    burst = np.full(100, 4000, np.int16)
    rec = _received(rate, [(1.0, burst), (2.0, burst)])  # 1.0-1.1 s and 2.0-2.1 s
    loud = rec.loud_times()
    assert onset_after(loud, eos=1.05) == pytest.approx(2.0)


def test_percentiles_interpolate():
    assert percentile([100, 200, 300, 400], 50) == 250
    assert percentile([float(x) for x in range(1, 101)], 95) == pytest.approx(95.05)
    assert np.isnan(percentile([], 50))


def test_low_rumble_after_speech_is_not_speech():
    from rejoinder.testing.loopback import tone

    rumble = tone(0.4, freq=40.0, amplitude=0.03)  # about -33 dBFS, below 100 Hz
    audio = np.concatenate([script_audio([("silence", 0.5), ("speech", 1.0)]), rumble,
                            script_audio([("silence", 1.0)])])
    (u,) = find_utterances(audio, 16000)
    # Without the high-pass the rumble would carry EoS to 1.9 s. The filter's ringing at
    # the tone's abrupt end may cost one 10 ms window (the measurement's resolution).
    assert u.start_s == 0.5
    assert u.end_s == pytest.approx(1.5, abs=0.0101)
