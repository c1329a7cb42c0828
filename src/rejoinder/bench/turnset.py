"""A small end-of-turn test set: turns with mid-sentence pauses and real ends, spliced from speech.

Each item is one sentence, cut at one to four word boundaries where a silence of 400-700 ms
is inserted (the caller pauses mid-sentence: *not* the end of the turn), and followed after its
last word by 1.5 s of silence (the real end). Sources:

- the LibriVox recordings of Debian's ``pocketsphinx-testdata``: cut at short gaps between
  words, the pauses filled with the recording's own background noise (the prosody runs on
  through the pause: the reader did not stop there); and the package's short commands
  (``goforward.raw``, ``cards/*.wav``, ...) as they are, as real ends only;
- sentences synthesised with ``espeak-ng`` (several voices and rates, 22.05 kHz resampled to
  16 kHz with libsoxr, faint line noise added), each twice: as a *hesitation* (the sentence
  synthesised whole and the pause inserted at a word boundary, so the prosody runs on through
  it) and with a *clause break* (an SSML ``<break>`` there, so the synthesiser closes the
  clause with a comma-like contour before the pause, as a speaker who stops to think may).

``build(out_dir)`` writes ``NAME.wav`` files (16 kHz mono PCM16) and ``manifest.json``::

    {"sample_rate": 16000,
     "items": [{"file": "librivox-0870-a.wav", "source": "librivox", "text": "...",
                "silences": [{"kind": "pause", "start_s": 1.52, "end_s": 2.04}, ...,
                             {"kind": "end", "start_s": 6.61, "end_s": 8.11}]}]}

``start_s`` is where the speech stops, ``end_s`` where it resumes (or the file ends). Run it
with ``python -m rejoinder.bench.turnset OUT_DIR``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rejoinder.client.measure import find_utterances
from rejoinder.core.audio import PCM, SAMPLE_RATE, read_wav, write_wav

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
LIBRIVOX = POCKETSPHINX / "librivox"
PAUSE_RANGE_S = (0.4, 0.7)
TRAILING_S = 1.5
_FRAME = SAMPLE_RATE // 50  # 20 ms

# Gaps between words in the LibriVox recordings (seconds), two sets of cuts per sentence where
# there are enough. Found from the energy, each checked by transcribing the audio on both
# sides of it (the words end and start cleanly there).
LIBRIVOX_CUTS: dict[str, list[list[tuple[float, float]]]] = {
    "0870": [[(1.80, 1.88), (2.90, 2.98), (4.16, 4.22), (5.68, 5.72)],  # had|then, to|consider,
             [(2.18, 2.28), (3.88, 4.04), (4.94, 5.00), (6.16, 6.20)]],  # much|there, his|power
    "0880": [[(0.96, 1.16)]],  # he was not | an ill disposed young man
    "0890": [[(1.22, 1.38), (3.60, 3.68)], [(2.14, 2.24), (3.84, 3.94)]],
    "0920": [[(1.44, 1.50), (3.80, 3.90)], [(2.54, 2.58)]],
    "0930": [[(1.06, 1.14)]],  # he might even have | been made amiable himself
}
# Real short commands: each one whole turn.
POCKETSPHINX_ENDS = {
    "goforward.raw": "go forward ten meters",
    "numbers.raw": "three three four six nine two",
    "something.raw": "go somewhere and do something",
    "cards/001.wav": "ten of clubs",
    "cards/002.wav": "four queen of clubs",
    "cards/003.wav": "seven of clubs",
    "cards/004.wav": "five five",
    "cards/005.wav": "eight of spades four of clubs seven of hearts",
    "tidigits/dhd.2934z.raw": "two nine three four zero",
}
# "|" marks where the speaker pauses mid-sentence.
SENTENCES = [
    "I would like to book a table for | two people tomorrow evening.",
    "Can you tell me | what time the pharmacy closes today?",
    "My order number is | four five seven two nine.",
    "I was wondering if | you could move my appointment to Friday.",
    "The package was supposed to arrive on Monday but | it still has not come.",
    "Please send the invoice to | my work email address.",
    "I need to change the delivery address because | I moved last week.",
    "Could you check whether | the blue jacket is in stock in medium?",
    "We are looking for a flight from Boston to | Denver next Thursday morning.",
    "What I really want to know is | how much the repair will cost.",
    "Yesterday I called about | a problem with my internet connection.",
    "If it is not too much trouble | I would like a window seat.",
    "The thing is that | my card was charged twice for the same order.",
    "I think the best time for me would be | after three in the afternoon.",
    "Could you remind me | what the cancellation policy is?",
    "So I went to the store and | they told me to call this number.",
    "I would like to pay my bill with | the card ending in one two three four.",
    "Is it possible to | upgrade my plan without a new contract?",
    "My daughter has an appointment with | doctor Patel on Wednesday.",
    "We need a room for | three nights starting on the twelfth.",
    "The address is | twenty two Baker Street in London.",
    "I can't log in because | the password reset link has expired.",
    "Could you please | repeat the last part of that?",
    "Actually I was hoping to | speak with someone in billing.",
]
VOICES = [("en-us", 165), ("en-gb", 155), ("en-us+f3", 175), ("en-gb-x-rp", 150),
          ("en-us+m3", 180), ("en-029", 160)]


@dataclass(frozen=True)
class Silence:
    kind: Literal["pause", "end"]
    start_s: float
    end_s: float


@dataclass
class TurnItem:
    file: str
    source: str
    text: str
    silences: list[Silence] = field(default_factory=list)


def build(out_dir: str | Path, *, seed: int = 0, librivox: bool = True,
          espeak: bool = True) -> Path:
    """Write the WAVs and ``manifest.json`` into ``out_dir``; return the manifest's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items: list[TurnItem] = []
    if librivox:
        items += _librivox_items(out, rng) + _pocketsphinx_items(out)
    if espeak:
        items += _espeak_items(out, rng)
    manifest = out / "manifest.json"
    manifest.write_text(json.dumps(
        {"sample_rate": SAMPLE_RATE, "items": [asdict(i) for i in items]}, indent=1))
    return manifest


def load(manifest: str | Path) -> list[TurnItem]:
    data = json.loads(Path(manifest).read_text())
    return [TurnItem(i["file"], i["source"], i["text"], [Silence(**s) for s in i["silences"]])
            for i in data["items"]]


# -- LibriVox ------------------------------------------------------------------------------

def _librivox_items(out: Path, rng: np.random.Generator) -> list[TurnItem]:
    texts = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        m = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
        if m:
            texts[m.group(2)[-4:]] = m.group(1)
    items = []
    for stem, cut_sets in LIBRIVOX_CUTS.items():
        pcm = read_wav(LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{stem}.wav")
        last = _speech_end(pcm)
        noise = _room_noise(pcm)
        for k, cuts in enumerate(cut_sets):
            item = TurnItem(f"librivox-{stem}-{'ab'[k]}.wav", "librivox", texts[stem])
            pieces, cursor, length = [], 0, 0
            for gap_start, gap_end in cuts:
                a, b = int(gap_start * SAMPLE_RATE), int(gap_end * SAMPLE_RATE)
                pieces.append(pcm[cursor:a])
                length += a - cursor
                pause = _fill(noise, _pause_samples(rng))
                item.silences.append(_silence("pause", length, length + len(pause)))
                pieces.append(pause)
                length += len(pause)
                cursor = b
            pieces.append(pcm[cursor:last])
            length += last - cursor
            tail = _fill(noise, int(TRAILING_S * SAMPLE_RATE))
            item.silences.append(_silence("end", length, length + len(tail)))
            write_wav(out / item.file, np.concatenate([*pieces, tail]), SAMPLE_RATE)
            items.append(item)
    return items


def _pocketsphinx_items(out: Path) -> list[TurnItem]:
    """Short real commands, as they are: each one a complete turn (ends only)."""
    items = []
    for name, text in POCKETSPHINX_ENDS.items():
        path = POCKETSPHINX / name
        if path.suffix == ".raw":
            pcm = np.fromfile(path, dtype="<i2").astype(np.int16)
        else:
            pcm = read_wav(path)
        last = _speech_end(pcm)
        noise = _room_noise(pcm)
        tail = _fill(noise, int(TRAILING_S * SAMPLE_RATE))
        item = TurnItem(f"pocketsphinx-{path.stem}.wav", "pocketsphinx", text,
                        [_silence("end", last, last + len(tail))])
        write_wav(out / item.file, np.concatenate([pcm[:last], tail]), SAMPLE_RATE)
        items.append(item)
    return items


def _speech_end(pcm: PCM) -> int:
    """The sample where the recording's speech ends, by the bench caller's own rule
    (``client.measure.find_utterances``: 10 ms windows above -40 dBFS, above 100 Hz too),
    so that an end delay here and a voice-to-voice latency there count from the same
    point. A level relative to the recording's noise floor put the end inside the low
    rumble some recordings end in (pocketsphinx's goforward: 340 ms late)."""
    spoken = find_utterances(pcm, SAMPLE_RATE)
    return round(spoken[-1].end_s * SAMPLE_RATE) if spoken else len(pcm)


def _room_noise(pcm: PCM, seconds: float = 0.12) -> PCM:
    """The quietest stretch of the recording: its background noise, to fill pauses with."""
    n = int(seconds * SAMPLE_RATE) // _FRAME
    frames = len(pcm) // _FRAME
    energy = np.mean(pcm[: frames * _FRAME].reshape(frames, _FRAME).astype(np.float64) ** 2, 1)
    window = np.convolve(energy, np.ones(n), mode="valid")
    start = int(np.argmin(window)) * _FRAME
    return pcm[start: start + n * _FRAME]


def _fill(noise: PCM, n: int) -> PCM:
    reps = -(-n // max(len(noise), 1))
    out: PCM = np.tile(noise, reps)[:n] if len(noise) else np.zeros(n, dtype=np.int16)
    return out


# -- espeak-ng -----------------------------------------------------------------------------

def _espeak_items(out: Path, rng: np.random.Generator) -> list[TurnItem]:
    """Two items per sentence: a hesitation (the prosody runs on through the pause) and a
    clause break (the synthesiser closes the clause before the pause, as at a comma)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    items = []
    with tempfile.TemporaryDirectory() as tmp:

        def say(ssml: str, voice: str, rate: int) -> PCM:
            wav = Path(tmp) / "say.wav"
            subprocess.run([exe, "-v", voice, "-s", str(rate), "-m", "-w", str(wav),
                            f"<speak>{ssml}</speak>"], check=True, capture_output=True,
                           timeout=60)
            return read_wav(wav)

        for i, sentence in enumerate(SENTENCES):
            voice, rate = VOICES[i % len(VOICES)]
            parts = [p.strip() for p in sentence.split("|")]
            text = " ".join(parts)
            # Hesitation: an x-weak break leaves everything before it as in the unbroken
            # sentence, so the first sample where the two differ is the word boundary.
            whole = say(text, voice, rate)
            marked = say(' <break strength="x-weak"/> '.join(parts), voice, rate)
            n = min(len(whole), len(marked))
            cuts = [int(np.flatnonzero(whole[:n] != marked[:n])[0])]
            items.append(_splice(out / f"espeak-{i:02d}-hesitation.wav", whole, cuts, [],
                                 f"espeak-ng {voice} {rate} wpm hesitation", text, rng))
            # Clause break: a timed break ends the clause there; its silence is replaced.
            broken = say(' <break time="1000ms"/> '.join(parts), voice, rate)
            runs = _zero_runs(broken, min_s=0.5)[: len(parts) - 1]
            items.append(_splice(out / f"espeak-{i:02d}-clause.wav", broken,
                                 [a for a, _ in runs], [b for _, b in runs],
                                 f"espeak-ng {voice} {rate} wpm clause", text, rng))
    return items


def _splice(path: Path, pcm: PCM, cuts: list[int], resumes: list[int], source: str, text: str,
            rng: np.random.Generator) -> TurnItem:
    """Insert a pause at each cut (speech resumes at ``resumes[i]``, default the cut itself),
    end after the last sound with the trailing silence, add faint line noise, write."""
    item = TurnItem(path.name, source, text)
    pieces, cursor, length = [], 0, 0
    for k, cut in enumerate(cuts):
        pieces.append(pcm[cursor:cut])
        length += cut - cursor
        n = _pause_samples(rng)
        item.silences.append(_silence("pause", length, length + n))
        pieces.append(np.zeros(n, dtype=np.int16))
        length += n
        cursor = resumes[k] if k < len(resumes) else cut
    last = _last_sound(pcm)
    pieces.append(pcm[cursor:last])
    length += last - cursor
    tail = int(TRAILING_S * SAMPLE_RATE)
    item.silences.append(_silence("end", length, length + tail))
    audio = np.concatenate([*pieces, np.zeros(tail, dtype=np.int16)])
    hiss = rng.normal(0.0, 10.0, len(audio))  # about -70 dBFS, like a quiet line
    write_wav(path, np.clip(audio + hiss, -32768, 32767).astype(np.int16), SAMPLE_RATE)
    return item


def _zero_runs(pcm: PCM, min_s: float, level: int = 8) -> list[tuple[int, int]]:
    """Runs of (near) digital silence of at least ``min_s`` inside the audio."""
    quiet = np.abs(pcm.astype(np.int32)) <= level
    edges = np.flatnonzero(np.diff(np.concatenate(([0], quiet.view(np.int8), [0]))))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return [(a, b) for a, b in runs if b - a >= min_s * SAMPLE_RATE and a > 0 and b < len(pcm)]


def _last_sound(pcm: PCM, level: int = 8) -> int:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > level)
    return int(loud[-1]) + 1 if loud.size else len(pcm)


# -- shared --------------------------------------------------------------------------------

def _pause_samples(rng: np.random.Generator) -> int:
    return int(rng.uniform(*PAUSE_RANGE_S) * SAMPLE_RATE)


def _silence(kind: Literal["pause", "end"], start: int, end: int) -> Silence:
    return Silence(kind, round(start / SAMPLE_RATE, 4), round(end / SAMPLE_RATE, 4))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m rejoinder.bench.turnset OUT_DIR\n")
        return 2
    manifest = build(args[0])
    sys.stdout.write(f"{manifest}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
