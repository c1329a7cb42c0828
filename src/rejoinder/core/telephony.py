"""Telephone audio: G.711 mu-law at 8 kHz in 20 ms frames of 160 bytes.

This is what Twilio Media Streams (and most SIP trunks) carry. :class:`PhoneDecoder` turns
one incoming frame into one server frame (160 codes in, 320 samples of 16 kHz PCM16 out);
:class:`PhoneEncoder` turns the agent's audio at any rate into 160-byte frames.

The codec is two lookup tables built once with numpy (65,536 entries to encode, 256 to
decode), bit-exact with the standard library's ``audioop`` on every input; ``audioop`` is
deprecated and gone in Python 3.13, so it cannot be the product's codec. (The ITU's own
G.191 code reads negative samples in ones' complement and encodes 508 of them one step
apart; this module follows ``audioop``, the codec Python servers have used until now.)
"""

from __future__ import annotations

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE, Resampler

PHONE_RATE = 8_000
PHONE_FRAME_MS = 20
PHONE_FRAME_BYTES = PHONE_RATE * PHONE_FRAME_MS // 1000  # 160: one byte per sample
MULAW_SILENCE = 0xFF  # the code for +0 (0x00 is the loudest negative sample, -32124)

# G.711 mu-law on 14-bit magnitudes (the 16-bit sample shifted right by 2), as ``audioop``
# does: the magnitude is clipped to 8159, biased by 33, and the
# segment is the first whose end is at or above it (none, at the clip: the top code).
_CLIP = 8159
_BIAS = 33
_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def _encode_table() -> np.ndarray:
    """Code for every int16 sample, indexed by the sample's bits read as uint16."""
    x = np.arange(-32768, 32768, dtype=np.int32) >> 2
    negative = x < 0
    magnitude = np.minimum(np.where(negative, -x, x), _CLIP) + _BIAS
    segment = np.searchsorted(_SEGMENT_ENDS, magnitude)  # 8: at the clip, the top code
    code = np.where(segment < 8, (segment << 4) | ((magnitude >> (segment + 1)) & 0xF), 0x7F)
    code ^= np.where(negative, 0x7F, 0xFF)  # mu-law sends every bit inverted, the sign too
    table = np.empty(65536, dtype=np.uint8)
    table[np.arange(-32768, 32768, dtype=np.int32).astype(np.int16).view(np.uint16)] = code
    return table


def _decode_table() -> np.ndarray:
    """Sample for every code: G.711 Table 2a's decoder output ((2m + 33) * 2^e - 33, in
    14-bit units) scaled to 16 bits."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 7, u & 0xF
    magnitude = (((mantissa << 1) + _BIAS) << exponent) - _BIAS
    table: np.ndarray = np.where(u & 0x80, -magnitude, magnitude).astype(np.int16) << 2
    return table


_ENCODE = _encode_table()
_DECODE = _decode_table()


def ulaw_encode(pcm: PCM) -> bytes:
    """int16 samples -> mu-law codes, one byte each."""
    samples = np.asarray(pcm, dtype=np.int16)
    codes: np.ndarray = _ENCODE[samples.view(np.uint16)]
    return codes.tobytes()


def ulaw_decode(data: bytes | bytearray | memoryview) -> PCM:
    """mu-law codes -> int16 samples."""
    pcm: PCM = _DECODE[np.frombuffer(data, dtype=np.uint8)]
    return pcm


class Upsampler:
    """Streaming 8 -> 16 kHz interpolation: every chunk comes out whole (n samples in, 2n
    out), so counts never drift, with a constant delay of :attr:`DELAY` output samples.

    A polyphase FIR: the 95-tap Kaiser-windowed sinc (beta 8, half gain at 4 kHz) split into
    its two phases, applied to the input's last 48 samples. It passes up to ~3.5 kHz (the
    whole telephone band) and takes the mirror image of the narrow band, above 4.4 kHz,
    down by ~80 dB.
    """

    TAPS = 95
    DELAY = (TAPS - 1) // 2  # 47 samples at 16 kHz, ~2.9 ms
    FACTOR = 2

    def __init__(self) -> None:
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        cutoff = 1.0 / self.FACTOR  # of the output's Nyquist rate
        h = cutoff * np.sinc(cutoff * n) * np.kaiser(self.TAPS, 8.0)
        h *= self.FACTOR / h.sum()  # unity gain after the zeros stuffed between samples
        h = np.concatenate([h, np.zeros(-len(h) % self.FACTOR)])
        self._width = len(h) // self.FACTOR  # 48 input samples per output sample
        # phases[:, p] holds the taps that make output sample factor*n + p, newest input first.
        phases = h.reshape(self._width, self.FACTOR)
        self._phases = np.ascontiguousarray(phases[::-1]).astype(np.float32)
        self._history = np.zeros(self._width - 1, dtype=np.float32)

    def __call__(self, pcm: PCM) -> PCM:
        keep = self._width - 1
        x = np.empty(keep + len(pcm), dtype=np.float32)
        x[:keep] = self._history
        x[keep:] = pcm
        self._history = x[len(x) - keep:]
        windows = np.lib.stride_tricks.sliding_window_view(x, self._width)  # (len(pcm), width)
        out = (windows @ self._phases).reshape(-1)
        np.clip(out, -32768, 32767, out=out)
        pcm16: PCM = np.rint(out, out=out).astype(np.int16)
        return pcm16


class PhoneDecoder:
    """Incoming phone audio: mu-law frames -> 16 kHz PCM16 (one 160-byte frame gives one
    320-sample server frame), :attr:`DELAY` samples late."""

    DELAY = Upsampler.DELAY

    def __init__(self) -> None:
        self._upsample = Upsampler()

    def __call__(self, payload: bytes | bytearray | memoryview) -> PCM:
        return self._upsample(ulaw_decode(payload))


class PhoneEncoder:
    """Outgoing phone audio: PCM16 at ``in_rate`` -> mu-law frames of exactly 160 bytes.

    ``push`` returns the whole frames ready so far and keeps the rest; ``flush`` (at the end
    of a reply) drains the resampler and pads the last frame with mu-law silence.
    """

    def __init__(self, in_rate: int) -> None:
        self.in_rate = in_rate
        self._resample = Resampler(in_rate, PHONE_RATE)
        self._pending = b""  # codes of the frame under way, fewer than 160
        self._fed = False  # audio pushed since the last flush

    def push(self, pcm: PCM) -> list[bytes]:
        self._fed = self._fed or len(pcm) > 0
        return self._frames(self._resample(pcm))

    def flush(self) -> list[bytes]:
        """The rest of the audio, the last frame padded; the encoder is ready for more."""
        if not self._fed:
            return []
        if self.in_rate % PHONE_RATE == 0:  # the decimator: zeros bring out its last outputs
            tail = self._resample(np.zeros(_DECIMATOR_TAIL, dtype=np.int16))
        else:  # soxr: ``last`` drains what it holds back
            tail = self._resample(np.zeros(0, dtype=np.int16), last=True)
        frames = self._frames(tail)
        if self._pending:
            frames.append(self._pending.ljust(PHONE_FRAME_BYTES, bytes([MULAW_SILENCE])))
        self._pending, self._fed = b"", False
        self._resample = Resampler(self.in_rate, PHONE_RATE)
        return frames

    def _frames(self, pcm: PCM) -> list[bytes]:
        data = self._pending + ulaw_encode(pcm)
        whole = len(data) - len(data) % PHONE_FRAME_BYTES
        self._pending = data[whole:]
        return [data[i:i + PHONE_FRAME_BYTES] for i in range(0, whole, PHONE_FRAME_BYTES)]


_DECIMATOR_TAIL = 31  # half the decimator's filter (core/audio.py's _Decimator, 63 taps)


def phone_path(pcm: PCM, codec: bool = True) -> PCM:
    """16 kHz audio as the server receives it over a phone line: down to 8 kHz, mu-law
    encoded and decoded (``codec`` False: not), up to 16 kHz; aligned with the input (the
    filters' delay removed) and of the same length. For measurements (bench/narrowband.py,
    turneval --phone)."""
    down = Resampler(SAMPLE_RATE, PHONE_RATE)
    narrow = down(np.concatenate([pcm, np.zeros(PATH_DELAY, dtype=np.int16)]))
    if codec:
        narrow = ulaw_decode(ulaw_encode(narrow))
    wide = Upsampler()(narrow)
    out: PCM = wide[PATH_DELAY:PATH_DELAY + len(pcm)]
    return out


# The decimator's delay (31 input samples) plus the upsampler's (47), at 16 kHz.
PATH_DELAY = _DECIMATOR_TAIL + Upsampler.DELAY
