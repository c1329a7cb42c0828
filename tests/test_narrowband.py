"""The phone-audio bench's scoring (bench/narrowband.py): normalised words, splits, sums."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rejoinder.bench.narrowband import (
    emphasise,
    normalise,
    split_manifest,
    split_of,
    wer_summary,
)
from rejoinder.testing.wer import word_errors


def _said(text: str) -> str:
    return " ".join(normalise(text))


def test_normalise_reads_numbers_and_abbreviations_as_words() -> None:
    assert _said("Go forward 10 meters.") == "go forward ten meters"
    assert _said("The address is 22 Baker St.") == "the address is twenty two baker street"
    assert _said("My order number is 45729") == "my order number is four five seven two nine"
    assert _said("On the 12th, Mr. Dashwood") == "on the twelfth mister dashwood"
    assert _said("ill-disposed; can't") == "ill disposed cant"


def test_a_transcript_that_only_writes_numbers_differently_has_no_errors() -> None:
    reference = normalise("eight of spades four of clubs seven of hearts")
    assert word_errors(reference, normalise("8 of spades, 4 of clubs, 7 of hearts.")) == 0


def test_splits_keep_recordings_and_voices_apart() -> None:
    assert split_of("librivox-0870-a.wav") == "tune"
    assert split_of("librivox-0890-b.wav") == "held-out"
    assert split_of("espeak-00-hesitation.wav") == "tune"  # en-us
    assert split_of("espeak-03-clause.wav") == "held-out"  # en-gb-x-rp
    assert split_of("espeak-08-clause.wav") == "tune"  # en-us+f3 again
    assert split_of("pocketsphinx-goforward.wav") == "held-out"


def test_split_manifest_writes_both_parts(tmp_path: Path) -> None:
    items = [{"file": f, "source": "x", "text": "", "silences": []}
             for f in ("librivox-0880-a.wav", "librivox-0930-a.wav", "espeak-04-clause.wav")]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"sample_rate": 16000, "items": items}))
    paths = split_manifest(manifest)
    files = {k: [i["file"] for i in json.loads(p.read_text())["items"]] for k, p in paths.items()}
    assert files == {"tune": ["librivox-0880-a.wav"],
                     "held-out": ["librivox-0930-a.wav", "espeak-04-clause.wav"]}


def test_wer_is_summed_over_words_not_averaged_over_utterances() -> None:
    rows = [
        {"name": "a", "group": "librivox", "split": "tune", "words": 20,
         "16k": {"errors": 1}, "phone": {"errors": 2}},
        {"name": "b", "group": "commands", "split": "held-out", "words": 4,
         "16k": {"errors": 0}, "phone": {"errors": 2}},
    ]
    summary = {(s["split"], s["group"]): s for s in wer_summary(rows, ["16k", "phone"])}
    assert summary[("all", "all")]["phone"] == {"errors": 4, "wer": 4 / 24}
    assert summary[("held-out", "commands")]["phone"]["wer"] == 0.5
    assert summary[("tune", "all")]["16k"]["wer"] == 0.05


def test_emphasis_keeps_the_level() -> None:
    t = np.arange(16_000) / 16_000
    pcm = (8000 * np.sin(2 * np.pi * 500 * t)).astype(np.int16)
    out = emphasise(pcm, 0.5)
    assert abs(float(np.std(out.astype(float))) / float(np.std(pcm.astype(float))) - 1) < 0.01


def test_both_transports_keep_the_length_and_level_of_speech_band_audio() -> None:
    """``eos``'s two paths: what each server hears is as long as what was said and, for a
    tone in the telephone band, as loud (Opus within 1 dB, mu-law within 0.2 dB)."""
    from rejoinder.bench.narrowband import over_phone, over_webrtc
    from rejoinder.core.audio import rms_dbfs
    from rejoinder.testing.loopback import tone

    said = tone(1.0, freq=440.0, amplitude=0.1)
    for path, within in ((over_phone, 0.2), (over_webrtc, 1.0)):
        heard = path(said)
        assert abs(len(heard) - len(said)) <= 320
        middle = slice(4000, 12000)  # clear of each path's delay and its start
        assert abs(rms_dbfs(heard[middle]) - rms_dbfs(said[middle])) < within
