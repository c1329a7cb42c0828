"""How loud the caller's frames are: the end of speech, found sooner than the VAD finds it.

Silero's speech probability stays above its threshold for 50-200 ms after the last
audible sound of an utterance (it looks at context, and its state decays slowly), so a
silence timer that trusts it alone starts that late. The engine also asks this gate
whether each frame Silero calls speech is audible; quiet frames after audible speech are
the caller having stopped, and count as silence (for at most ``quiet_tail_s`` in a row:
longer, it is quiet speech, and the VAD is trusted again).

A frame's level is its power above ~100 Hz, as the caller measures its own end of speech
(``client/measure.highpass``): a recording's low rumble is not speech. Opus removes it
before the server hears a WebRTC caller; a phone line (mu-law) keeps it, and measured
whole it held the end of speech 100-150 ms late on noisy recordings over the phone.

A frame is audible when its level is above all of:
- ``quiet_dbfs`` (-45 dBFS by default: 5 dB under the level at which the benchmark's
  caller places the end of its own speech, so that the server does not find an end the
  caller would not, even after Opus), or 20 dB under the loudest frame of the utterance
  so far if that is lower: a quiet talker's soft syllables are not an end;
- the line's noise floor plus 6 dB, so a noisy line is judged by the VAD alone.
The floor starts at the first frame the VAD calls silence; after that it drops to any
quieter one and otherwise rises by 2.5 dB a second of silence. It must not follow the
loud frames the VAD calls silence at the onset of speech (its onset lag), which would
make speech look quiet. A caller who never rises above the threshold is judged by the
VAD alone, as without this gate.

The same gate tells when the caller starts to talk over the agent: the frames before the
VAD's verdict that are loud (``loud``) count towards the ``barge_in_min_s`` it takes to
hold the agent's audio, so the hold does not add its own wait to the VAD's onset lag.
"""

from __future__ import annotations

import functools

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE

_FULL_SCALE = 32768.0 * 32768.0
_FLOOR_MARGIN = 4.0                  # 6 dB, in power
_PEAK_MARGIN = 0.01                  # 20 dB, in power
_FLOOR_RISE = 10.0 ** (0.05 / 10.0)  # 0.05 dB per frame the VAD calls silence
_HIGHPASS_HZ = 100.0
_FLOOR_MIN = 1.0                     # -93 dBFS: a floor of digital silence can still rise


class LevelGate:
    """Per call: is this frame audible, given the line and the utterance so far?"""

    def __init__(self, quiet_dbfs: float) -> None:
        self._quiet = _FULL_SCALE * 10.0 ** (quiet_dbfs / 10.0)  # mean square
        self._floor: float | None = None  # mean square; None until the first silence
        self._peak = 0.0                  # loudest frame of this utterance
        self._frame: PCM | None = None    # the frame last measured, and its power: the
        self._frame_power = 0.0           # engine asks loud() and then audible() or silence()

    def _power(self, frame: PCM) -> float:
        """The frame's power, measured once however often it is asked about (frames are
        not changed once received)."""
        if frame is not self._frame:
            self._frame, self._frame_power = frame, _power(frame)
        return self._frame_power

    def audible(self, frame: PCM) -> bool:
        """A frame the VAD calls speech: is it loud enough to be speech?"""
        power = self._power(frame)
        self._peak = max(self._peak, power)
        floor = (self._floor or 0.0) * _FLOOR_MARGIN
        return bool(power > max(floor, min(self._quiet, self._peak * _PEAK_MARGIN)))

    def loud(self, frame: PCM) -> bool:
        """Any frame, whatever the VAD says: above ``quiet_dbfs`` and the noise floor. The
        VAD calls speech 30-100 ms after it starts; this knows at the first loud frame."""
        return bool(self._power(frame) > max((self._floor or 0.0) * _FLOOR_MARGIN, self._quiet))

    def silence(self, frame: PCM) -> None:
        """A frame the VAD called silence: it tells what the line sounds like."""
        power = self._power(frame)
        if self._floor is not None:
            power = min(power, self._floor * _FLOOR_RISE)
        self._floor = max(_FLOOR_MIN, power)

    def new_utterance(self) -> None:
        self._peak = 0.0


def _power(frame: PCM) -> float:
    """Mean square of the frame above ~100 Hz: drift and low rumble are not speech (Opus in
    voice mode removes them before the server hears a WebRTC caller; a phone line does not).
    A 20 ms frame resolves 50 Hz, so the split is coarse: the frame's straight-line trend
    goes first (drift under ~30 Hz, where a recording's rumble mostly lies, comes out 20 dB
    or more down), then the spectrum is weighed as the caller's own filter does."""
    n = frame.size
    if n < 2:
        return 0.0
    ramp, ramp_energy = _ramp(n)
    x = frame.astype(np.float32)
    x -= float(np.add.reduce(x)) / n
    x -= ramp * (float(np.dot(x, ramp)) / ramp_energy)
    spectrum = np.fft.rfft(x)
    power = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag
    return float(np.dot(power, _weights(n))) / (n * n)


@functools.cache
def _ramp(n: int) -> tuple[np.ndarray, float]:
    """A straight line through an ``n``-sample frame, centred (orthogonal to a constant)."""
    ramp = (np.arange(n) - (n - 1) / 2.0).astype(np.float32)
    return ramp, float(np.dot(ramp, ramp))


@functools.cache
def _weights(n: int) -> np.ndarray:
    """Per rfft bin of an ``n``-sample frame: the one-sided spectrum's weight in the mean
    square (Parseval), times a raised-cosine high-pass from 50 to 100 Hz (the caller's
    own filter in ``client/measure.highpass``)."""
    freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    edge = np.clip((freqs - _HIGHPASS_HZ / 2) / (_HIGHPASS_HZ / 2), 0.0, 1.0)
    weights = (0.5 - 0.5 * np.cos(np.pi * edge)) ** 2 * 2.0
    if n % 2 == 0:
        weights[-1] /= 2.0  # the Nyquist bin is not mirrored
    out: np.ndarray = weights.astype(np.float32)
    return out


class PreRoll:
    """The last ``seconds`` of audio before speech (onsets are soft): frames are kept while
    no utterance is open, and handed over when one opens."""

    def __init__(self, seconds: float) -> None:
        self._limit = seconds * SAMPLE_RATE
        self._frames: list[PCM] = []
        self._len = 0

    def keep(self, frame: PCM) -> None:
        self._frames.append(frame)
        self._len += len(frame)
        while self._frames and self._len - len(self._frames[0]) >= self._limit:
            self._len -= len(self._frames.pop(0))

    def start_with(self, audio: PCM) -> None:
        """The next utterance starts with ``audio``, however long."""
        self._frames, self._len = [audio], len(audio)

    def take(self) -> list[PCM]:
        frames, self._frames, self._len = self._frames, [], 0
        return frames
