"""Telephone audio (core/telephony.py): the G.711 mu-law codec, 8 <-> 16 kHz, 160-byte frames."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from rejoinder.core.audio import Resampler
from rejoinder.core.telephony import (
    MULAW_SILENCE,
    PATH_DELAY,
    PHONE_FRAME_BYTES,
    PhoneDecoder,
    PhoneEncoder,
    Upsampler,
    phone_path,
    ulaw_decode,
    ulaw_encode,
)

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)


def _reference_encode(sample: int) -> int:
    """G.711 mu-law of one 16-bit sample, written out step by step: its 14 top bits, the
    magnitude clipped to 8159 and biased by 33, the segment (0-7) whose end (2^(s+6) - 1)
    is at or above it, four bits of mantissa, every bit inverted."""
    value = sample >> 2
    sign = 0x80 if value < 0 else 0x00
    magnitude = min(-value if value < 0 else value, 8159) + 33
    for segment in range(8):
        if magnitude <= (1 << (segment + 6)) - 1:
            code = (segment << 4) | ((magnitude >> (segment + 1)) & 0xF)
            return (sign | code) ^ 0xFF
    return (sign | 0x7F) ^ 0xFF  # at the clip: the top code


def _reference_decode(code: int) -> int:
    """G.711 Table 2a: the decoder output of code (e, m) is (2m + 33) * 2^e - 33 in 14-bit
    units, negative when the (inverted) sign bit is set; times 4 for 16 bits."""
    u = code ^ 0xFF
    e, m = (u >> 4) & 7, u & 0xF
    magnitude = ((2 * m + 33) << e) - 33
    return 4 * (-magnitude if u & 0x80 else magnitude)


def test_encode_matches_the_reference_for_every_int16() -> None:
    expected = bytes(_reference_encode(int(x)) for x in ALL_INT16)
    assert ulaw_encode(ALL_INT16) == expected


def test_decode_matches_table_2a_for_every_code() -> None:
    expected = np.array([_reference_decode(c) for c in range(256)], dtype=np.int16)
    decoded = ulaw_decode(bytes(range(256)))
    assert decoded.dtype == np.int16
    assert np.array_equal(decoded, expected)
    assert decoded[0x00] == -32124 and decoded[0x80] == 32124
    assert decoded[0xFF] == 0 and decoded[0x7F] == 0


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="audioop left the stdlib in 3.13")
def test_codec_is_bit_exact_with_audioop() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    assert ulaw_encode(ALL_INT16) == audioop.lin2ulaw(ALL_INT16.tobytes(), 2)
    codes = bytes(range(256))
    assert ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)


def test_decode_then_encode_gives_every_code_back() -> None:
    codes = bytes(range(256))
    again = ulaw_encode(ulaw_decode(codes))
    # +0 and -0 both decode to 0, which encodes as +0 (0xFF); every other code is its own.
    assert again == codes[:0x7F] + bytes([0xFF]) + codes[0x80:]


def test_encode_takes_strided_views() -> None:
    pcm = ALL_INT16[::7]
    assert ulaw_encode(pcm) == ulaw_encode(np.ascontiguousarray(pcm))


def _tone(freq: float, rate: int, seconds: float, amplitude: float = 12_000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    a, b = clean.astype(np.float64), noisy.astype(np.float64)
    return float(10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2)))


@pytest.mark.parametrize(("freq", "min_snr"), [(300, 50.0), (1000, 80.0), (3000, 50.0)])
def test_8k_to_16k_to_8k_keeps_a_tone(freq: float, min_snr: float) -> None:
    tone = _tone(freq, 8000, 2.0)
    up = Upsampler()
    wide = np.concatenate([up(tone[i:i + 160]) for i in range(0, len(tone), 160)])
    narrow = Resampler(16_000, 8000)(wide)
    lag = (Upsampler.DELAY + 31) // 2  # 39 samples at 8 kHz: both filters' delays
    inner = slice(400, len(tone) - 400)
    shifted = narrow[400 + lag:len(tone) - 400 + lag]
    assert _snr_db(tone[inner], shifted) >= min_snr


def test_upsampler_doubles_every_chunk_and_chunking_does_not_change_it() -> None:
    audio = np.random.default_rng(2).integers(-8000, 8000, 8000).astype(np.int16)
    whole = Upsampler()(audio)
    up = Upsampler()
    sizes = [len(up(audio[i:i + n])) for i, n in _chunks(len(audio), seed=3)]
    up = Upsampler()
    pieces = np.concatenate([up(audio[i:i + n]) for i, n in _chunks(len(audio), seed=3)])
    assert sizes == [2 * n for _, n in _chunks(len(audio), seed=3)]
    assert np.array_equal(pieces, whole)


def test_upsampler_removes_the_mirror_image() -> None:
    tone = _tone(3000, 8000, 1.0)  # its image after zero stuffing sits at 5 kHz
    wide = Upsampler()(tone).astype(np.float64)[200:]
    spectrum = np.abs(np.fft.rfft(wide * np.hanning(len(wide))))
    freqs = np.fft.rfftfreq(len(wide), 1 / 16_000)
    at = {f: spectrum[np.argmin(np.abs(freqs - f))] for f in (3000, 5000)}
    assert 20 * np.log10(at[5000] / at[3000]) < -70


def _chunks(total: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    out, i = [], 0
    while i < total:
        n = min(int(rng.integers(1, 700)), total - i)
        out.append((i, n))
        i += n
    return out


def test_decoder_turns_one_phone_frame_into_one_server_frame() -> None:
    decoder = PhoneDecoder()
    frames = [decoder(bytes([MULAW_SILENCE]) * PHONE_FRAME_BYTES) for _ in range(3)]
    assert [len(f) for f in frames] == [320, 320, 320]
    assert all(f.dtype == np.int16 for f in frames)


@pytest.mark.parametrize("rate", [22_050, 24_000, 16_000, 48_000])
def test_encoder_frames_are_160_bytes_and_the_last_is_padded_with_silence(rate: int) -> None:
    audio = _tone(440, rate, 1.013)
    encoder = PhoneEncoder(rate)
    frames = [f for i, n in _chunks(len(audio), seed=4) for f in encoder.push(audio[i:i + n])]
    frames += encoder.flush()
    assert all(len(f) == PHONE_FRAME_BYTES for f in frames)
    data = b"".join(frames)
    narrow = round(len(audio) * 8000 / rate)  # samples of 8 kHz audio, within the filter's tail
    assert -(-narrow // PHONE_FRAME_BYTES) <= len(frames) <= -(-(narrow + 16) // PHONE_FRAME_BYTES)
    assert data[-1] == MULAW_SILENCE  # padding is +0, not 0x00 (a full-scale negative sample)
    assert encoder.flush() == []


@pytest.mark.parametrize("rate", [22_050, 24_000])
def test_a_long_stream_keeps_its_sample_count(rate: int) -> None:
    """Ten minutes of agent audio in uneven chunks: the 8 kHz sample count is the exact
    ratio of the input's (no drift), whatever the chunking."""
    seconds = 600
    chunk = np.random.default_rng(5).integers(-3000, 3000, rate).astype(np.int16)
    encoder = PhoneEncoder(rate)
    codes = 0
    for k in range(seconds):
        cut = 37 * (k % 11) + 1
        for piece in (chunk[:cut], chunk[cut:]):
            codes += sum(len(f) for f in encoder.push(piece))
    tail = encoder.flush()
    codes += sum(len(f) for f in tail)
    expected = seconds * 8000
    if rate % 8000 == 0:
        expected += -(-31 // (rate // 8000))  # the decimator's filter tail
    assert codes == -(-expected // PHONE_FRAME_BYTES) * PHONE_FRAME_BYTES


def test_phone_path_is_aligned_and_keeps_the_length() -> None:
    pcm = np.zeros(4000, dtype=np.int16)
    pcm[1001] = 20_000
    out = phone_path(pcm)
    assert len(out) == len(pcm)
    assert int(np.argmax(np.abs(out))) == 1001
    assert PATH_DELAY == 78


@pytest.mark.parametrize(("freq", "min_snr", "max_loss_db"), [
    (300, 35.0, 0.1), (1000, 33.0, 0.2), (3000, 33.0, 0.2),
])
def test_phone_path_keeps_the_telephone_band(freq: float, min_snr: float,
                                             max_loss_db: float) -> None:
    """Within the band the error is mu-law's quantisation (~35 dB SNR for a loud tone)."""
    tone = _tone(freq, 16_000, 1.0)
    out = phone_path(tone)
    inner = slice(500, len(tone) - 500)
    assert _snr_db(tone[inner], out[inner]) >= min_snr
    loss = 20 * np.log10(np.std(tone[inner].astype(float)) / np.std(out[inner].astype(float)))
    assert loss <= max_loss_db


def test_phone_path_removes_what_a_phone_line_cannot_carry() -> None:
    tone = _tone(5000, 16_000, 1.0)
    out = phone_path(tone)[500:-500].astype(float)
    assert 20 * np.log10(np.std(out) / np.std(tone.astype(float))) < -60


def test_phone_path_without_the_codec_is_the_band_alone() -> None:
    tone = _tone(1000, 16_000, 1.0)
    inner = slice(500, len(tone) - 500)
    assert _snr_db(tone[inner], phone_path(tone, codec=False)[inner]) >= 60.0
