"""How loud the caller's frames are: the end of speech, found faster than the VAD finds it.

Silero's speech probability stays above its threshold for 50–150 ms after the last
audible sound of an utterance (it looks at context, and its state decays slowly). Counted
from Silero's verdict alone, every silence timer starts that late. The caller, though, is
silent from the last audible frame. So the engine also asks this gate whether each frame
Silero calls speech is audible, and when Silero flips to silence it credits the quiet
frames at the end of the utterance to the silence timer (at most ``quiet_tail_s``).

A frame is audible when its level is above ``quiet_dbfs`` and 6 dB above the line's noise
floor (the level of recent frames Silero called silence), so a noisy line credits less,
and a caller who never rises above the threshold gets no credit at all: there the VAD
alone decides, as before.
"""

from __future__ import annotations

import numpy as np

from rejoinder.core.audio import PCM

_FULL_SCALE = 32768.0 * 32768.0
_FLOOR_MARGIN = 4.0        # 6 dB, in power
_FLOOR_SMOOTHING = 0.1     # per frame: the floor follows the line within ~10 frames


class LevelGate:
    """Per call: is this frame audible, given the line's noise floor so far?"""

    def __init__(self, quiet_dbfs: float) -> None:
        self._quiet = _FULL_SCALE * 10.0 ** (quiet_dbfs / 10.0)  # mean square
        self._floor = 0.0

    def audible(self, frame: PCM) -> bool:
        return bool(_power(frame) > max(self._quiet, self._floor * _FLOOR_MARGIN))

    def silence(self, frame: PCM) -> None:
        """A frame the VAD called silence: it tells what the line sounds like."""
        self._floor += _FLOOR_SMOOTHING * (_power(frame) - self._floor)


def _power(frame: PCM) -> float:
    """Mean square of the frame, without its DC offset."""
    if frame.size == 0:
        return 0.0
    x = frame.astype(np.float32)
    mean = float(x.mean())
    return float(np.dot(x, x)) / x.size - mean * mean
