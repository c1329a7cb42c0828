"""What a phone line (8 kHz G.711 mu-law) does to the embedded speech models.

Every utterance is heard twice: as recorded (16 kHz) and through the phone path
(``core/telephony.phone_path``: 16 -> 8 kHz, mu-law encoded and decoded, back to 16 kHz, as
the server receives a call). Commands:

- ``wer``: Whisper's word error rate (the product's ``WhisperOptions``), per split;
- ``vad``: how often Silero VAD's per-frame decision (at the engine's threshold) differs,
  in its 16 kHz mode on the upsampled audio and in its 8 kHz mode;
- ``split MANIFEST``: turnset.py's manifest as ``manifest-tune.json`` and
  ``manifest-held-out.json``, split by the same rule, for ``turneval``;
- ``turns LABEL=TURNEVAL.json ...``: ``turneval --json`` reports scored per split;
- ``eos [--script S]``: per turn of a bench script, where the engine puts the end of speech
  (Silero, the level gate and the quiet tail, as ``turneval`` replays them) against the
  caller's own end of speech, as recorded, through the phone (the caller's resampling to
  8 kHz, mu-law, the server's decoder) and over WebRTC (the bench caller's Opus, decoded and
  decimated as the server does).

Utterances, split so that nothing reported as held out was used to choose a fix:

- ``tune``: LibriVox 0870 and 0880 of Debian's ``pocketsphinx-testdata``, and the espeak-ng
  sentences of turnset.py in voices en-us, en-gb and en-us+f3;
- ``held-out``: LibriVox 0890, 0920 and 0930 (other recordings of the same reader), the
  package's short commands (other speakers and microphones), and the espeak-ng sentences in
  voices en-gb-x-rp, en-us+m3 and en-029.

WER is word-level edit distance over the reference's word count, after lowercasing, dropping
punctuation and reading numbers as words (``normalise``). Run it with
``python -m rejoinder.bench.narrowband wer|vad|split|turns|eos [ARGS] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rejoinder.bench import turnset
from rejoinder.core.audio import FRAME_SAMPLES, PCM, read_wav
from rejoinder.core.telephony import phone_path, ulaw_decode, ulaw_encode
from rejoinder.testing.wer import word_errors

TUNE_LIBRIVOX = ("0870", "0880")
HELD_OUT_LIBRIVOX = ("0890", "0920", "0930")
TUNE_VOICES = 3  # the first three of turnset.VOICES tune, the other three are held out


@dataclass(frozen=True)
class Utterance:
    name: str
    group: str  # librivox, commands, espeak
    split: str  # tune, held-out
    text: str
    pcm: PCM


def utterances(groups: tuple[str, ...] = ("librivox", "commands", "espeak")) -> list[Utterance]:
    """The test utterances at 16 kHz, in a fixed order."""
    out: list[Utterance] = []
    if "librivox" in groups:
        texts = {}
        for line in (turnset.LIBRIVOX / "transcription").read_text().splitlines():
            m = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
            if m:
                texts[m.group(2)[-4:]] = m.group(1)
        for stem in (*TUNE_LIBRIVOX, *HELD_OUT_LIBRIVOX):
            pcm = read_wav(turnset.LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{stem}.wav")
            split = "tune" if stem in TUNE_LIBRIVOX else "held-out"
            out.append(Utterance(f"librivox-{stem}", "librivox", split, texts[stem], pcm))
    if "commands" in groups:
        for name, text in turnset.POCKETSPHINX_ENDS.items():
            path = turnset.POCKETSPHINX / name
            pcm = (np.fromfile(path, dtype="<i2").astype(np.int16) if path.suffix == ".raw"
                   else read_wav(path))
            out.append(Utterance(f"command-{path.stem}", "commands", "held-out", text, pcm))
    if "espeak" in groups:
        out += list(_espeak())
    return out


def _espeak() -> Iterator[Utterance]:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "say.wav"
        for i, sentence in enumerate(turnset.SENTENCES):
            k = i % len(turnset.VOICES)
            voice, rate = turnset.VOICES[k]
            text = " ".join(p.strip() for p in sentence.split("|"))
            subprocess.run([exe, "-v", voice, "-s", str(rate), "-w", str(wav), text],
                           check=True, capture_output=True, timeout=60)
            split = "tune" if k < TUNE_VOICES else "held-out"
            yield Utterance(f"espeak-{i:02d}-{voice}", "espeak", split, text, read_wav(wav))


# -- word error rate -------------------------------------------------------------------------

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORDINALS = {"1st": "first", "2nd": "second", "3rd": "third", "4th": "fourth", "5th": "fifth",
             "6th": "sixth", "7th": "seventh", "8th": "eighth", "9th": "ninth",
             "10th": "tenth", "11th": "eleventh", "12th": "twelfth", "13th": "thirteenth",
             "20th": "twentieth", "21st": "twenty first", "22nd": "twenty second"}
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "street"}


def _number(digits: str) -> str:
    """Up to two digits as a cardinal ("22" -> "twenty two"); longer strings, such as order
    and card numbers, digit by digit, as a caller reads them."""
    if len(digits) > 2:
        return " ".join(_ONES[int(d)] for d in digits)
    n = int(digits)
    if n < 20:
        return _ONES[n]
    return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])


def normalise(text: str) -> list[str]:
    """Words for scoring: lowercase, hyphens as spaces, other punctuation and apostrophes
    dropped, numbers and ordinals as words, a few abbreviations spelled out."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: _ORDINALS.get(m.group(0), m.group(1)),
                  text)
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,000 -> 1000
    text = re.sub(r"\d+", lambda m: f" {_number(m.group(0))} ", text)
    text = re.sub(r"[^a-z0-9 ]", " ", text.replace("'", ""))
    return [_ABBREVIATIONS.get(w, w) for w in text.split()]


def emphasise(pcm: PCM, a: float) -> PCM:
    """First-order pre-emphasis ``y[n] = x[n] - a x[n-1]``, at the input's RMS level."""
    x = pcm.astype(np.float32)
    y = x.copy()
    y[1:] -= np.float32(a) * x[:-1]
    y *= np.std(x) / max(float(np.std(y)), 1e-6)
    out: PCM = np.clip(np.rint(y), -32768, 32767).astype(np.int16)
    return out


def measure_wer(items: list[Utterance], transcribe: Callable[[PCM], str],
                paths: dict[str, Callable[[PCM], PCM]]) -> list[dict[str, Any]]:
    """Per utterance and path: the transcript and its word errors."""
    rows = []
    for item in items:
        ref = normalise(item.text)
        row: dict[str, Any] = {"name": item.name, "group": item.group, "split": item.split,
                               "words": len(ref)}
        for label, path in paths.items():
            text = transcribe(path(item.pcm))
            row[label] = {"text": text, "errors": word_errors(ref, normalise(text))}
        rows.append(row)
    return rows


def wer_summary(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """WER per (split, group), per split and overall, for each path."""
    keys: list[tuple[str, str]] = []
    for split in ("tune", "held-out"):
        groups = sorted({r["group"] for r in rows if r["split"] == split})
        keys += [(split, g) for g in groups] + [(split, "all")] * bool(groups)
    keys.append(("all", "all"))
    out = []
    for split, group in keys:
        chosen = [r for r in rows if split in ("all", r["split"]) and group in ("all", r["group"])]
        words = sum(r["words"] for r in chosen)
        entry: dict[str, Any] = {"split": split, "group": group, "utterances": len(chosen),
                                 "words": words}
        for label in labels:
            errors = sum(r[label]["errors"] for r in chosen)
            entry[label] = {"errors": errors, "wer": errors / words if words else None}
        out.append(entry)
    return out


def wer_table(summary: list[dict[str, Any]], labels: list[str]) -> str:
    lines = [f"{'split':<10}{'group':<10}{'utts':>5}{'words':>6}"
             + "".join(f"{label:>18}" for label in labels)]
    for s in summary:
        cells = "".join(f"{s[label]['errors']:>6} {100 * s[label]['wer']:>9.1f} %"
                        for label in labels)
        lines.append(f"{s['split']:<10}{s['group']:<10}{s['utterances']:>5}{s['words']:>6}"
                     + cells)
    return "\n".join(lines)


# -- voice activity --------------------------------------------------------------------------

def vad_flags(pcm: PCM, threshold: float, rate: int = 16_000) -> list[bool]:
    """Silero VAD's decision per 20 ms frame, as the engine takes it (``rate``: its mode)."""
    from rejoinder.providers.local.silero import SileroOptions, SileroVAD

    vad = SileroVAD(SileroOptions(sample_rate=rate))
    stream = vad.stream()
    try:
        return [stream.push(pcm[a:a + FRAME_SAMPLES]) >= threshold
                for a in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    finally:
        stream.close()
        vad.close()


def compare_vad(items: list[Utterance], threshold: float) -> list[dict[str, Any]]:
    """Per split and Silero mode on the phone path (16 kHz on the upsampled audio, or 8 kHz):
    frames whose decision differs from the 16 kHz recording's, utterances whose first voiced
    frame comes later (and the most frames later), and how far the last voiced frame moved
    (frames; negative: the phone path's speech ends sooner)."""
    rows: list[dict[str, Any]] = []
    for item in items:
        reference = np.array(vad_flags(item.pcm, threshold))
        phone = phone_path(item.pcm)
        for rate in (16_000, 8000):
            flags = np.array(vad_flags(phone, threshold, rate))
            rows.append({"name": item.name, "split": item.split, "vad_rate": rate,
                         "frames": len(flags), "voiced_16k": int(reference.sum()),
                         "voiced_phone": int(flags.sum()),
                         "differ": int((flags != reference).sum()),
                         "start_shift": _first(flags) - _first(reference),
                         "end_shift": _last(flags) - _last(reference)})
    out = []
    for split in ("tune", "held-out"):
        for rate in (16_000, 8000):
            chosen = [r for r in rows if r["split"] == split and r["vad_rate"] == rate]
            if not chosen:
                continue
            starts = np.array([r["start_shift"] for r in chosen])
            shifts = np.array([r["end_shift"] for r in chosen])
            out.append({"split": split, "vad_rate": rate, "utterances": len(chosen),
                        **{k: sum(r[k] for r in chosen)
                           for k in ("frames", "voiced_16k", "voiced_phone", "differ")},
                        "starts_later": int((starts > 0).sum()),
                        "start_shift_max": int(starts.max()),
                        "ends_sooner": int((shifts < 0).sum()),
                        "end_shift_min": int(shifts.min()), "end_shift_max": int(shifts.max()),
                        "items": chosen})
    return out


def _first(flags: np.ndarray) -> int:
    return int(np.argmax(flags)) if flags.any() else 0


def _last(flags: np.ndarray) -> int:
    return int(len(flags) - np.argmax(flags[::-1])) if flags.any() else 0


def vad_table(summary: list[dict[str, Any]]) -> str:
    lines = [f"{'split':<10}{'silero':>8}{'utts':>6}{'frames':>8}{'voiced 16k':>12}"
             f"{'voiced phone':>14}{'differ':>8}{'starts later':>14}{'ends sooner':>13}"
             f"{'end shift':>12}"]
    for s in summary:
        lines.append(f"{s['split']:<10}{s['vad_rate'] // 1000:>6}k{s['utterances']:>7}"
                     f"{s['frames']:>8}{s['voiced_16k']:>12}{s['voiced_phone']:>14}"
                     f"{s['differ']:>8}{s['starts_later']:>8} (<={s['start_shift_max']})"
                     f"{s['ends_sooner']:>13}"
                     f"{s['end_shift_min']:>6}..{s['end_shift_max']:<4}")
    return "\n".join(lines)


# -- turneval's set, split the same way -----------------------------------------------------

def split_of(file: str) -> str:
    """The split of a turnset.py item, by the rule of :func:`utterances`."""
    if file.startswith("librivox-"):
        return "tune" if file.split("-")[1] in TUNE_LIBRIVOX else "held-out"
    if file.startswith("espeak-"):
        return "tune" if int(file.split("-")[1]) % len(turnset.VOICES) < TUNE_VOICES else "held-out"
    return "held-out"  # the short commands


def split_manifest(manifest: str | Path) -> dict[str, Path]:
    """Write ``manifest-tune.json`` and ``manifest-held-out.json`` beside a turnset.py
    manifest (for ``turneval``); their paths by split."""
    path = Path(manifest)
    data = json.loads(path.read_text())
    out = {}
    for split in ("tune", "held-out"):
        items = [i for i in data["items"] if split_of(i["file"]) == split]
        out[split] = path.with_name(f"{path.stem}-{split}.json")
        out[split].write_text(json.dumps({**data, "items": items}, indent=1))
    return out


def turneval_by_split(reports: dict[str, Path]) -> str:
    """A table of turneval runs (``--json`` files, by label) scored per split."""
    from rejoinder.bench.turneval import _summary

    lines = [f"{'audio':<14}{'policy':<20}{'split':<10}{'cut off':>14}{'in speech':>10}"
             f"{'end delay mean/p50/p95':>24}{'vad lag':>9}"]
    for label, path in reports.items():
        for report in json.loads(path.read_text()).values():
            for split in ("tune", "held-out", "all"):
                items = [i for i in report["items"] if split in ("all", split_of(i["file"]))]
                s = _summary(items)
                d = s["delay_ms"]
                lines.append(
                    f"{label:<14}{report['policy'].split()[0]:<20}{split:<10}"
                    f"{s['items_cut_off']:>5}/{s['items_with_pause']:<3}"
                    f"{100 * (s['cut_off_rate'] or 0):5.1f}%{s['cutoffs_in_speech']:>10}"
                    f"{d['mean']:>10.0f}/{d['p50']:.0f}/{d['p95']:.0f}"
                    f"{s['vad_lag_ms_mean']:>9.0f}")
    return "\n".join(lines)


# -- the end of speech per transport ----------------------------------------------------------

def over_phone(pcm: PCM) -> PCM:
    """16 kHz audio as a phone call's server hears it from the bench's phone caller."""
    from rejoinder.core.audio import SAMPLE_RATE, resample
    from rejoinder.core.telephony import PHONE_RATE, PhoneDecoder

    narrow = resample(pcm, SAMPLE_RATE, PHONE_RATE)
    narrow = np.concatenate([narrow, np.zeros(-len(narrow) % 160, np.int16)])
    decoder = PhoneDecoder()
    return np.concatenate([decoder(ulaw_encode(narrow[k:k + 160]))
                           for k in range(0, len(narrow), 160)])


def over_webrtc(pcm: PCM) -> PCM:
    """16 kHz audio as a WebRTC call's server hears it from the bench's caller (Opus)."""
    import av

    from rejoinder.client.connection import encode_frames
    from rejoinder.core.audio import OUT_RATE, SAMPLE_RATE, Resampler, resample

    decoder = av.CodecContext.create("opus", "r")
    down = Resampler(OUT_RATE, SAMPLE_RATE)
    out = []
    for packet in encode_frames(resample(pcm, SAMPLE_RATE, OUT_RATE)):
        for frame in decoder.decode(av.Packet(packet)):
            left = frame.to_ndarray()[0]  # float planar
            out.append(down(np.clip(left * 32768.0, -32768, 32767).astype(np.int16)))
    return np.concatenate(out)


def eos_offsets(script: str, quiet_dbfs: float | None = None) -> list[dict[str, Any]]:
    """Per turn of ``script``: ms from the caller's end of speech to the engine's (the end
    of its last frame counted as speech), per path. Each turn is heard alone, after 0.5 s
    of silence and before 2 s of it."""
    from dataclasses import replace

    from rejoinder.bench.scripts import load_script
    from rejoinder.bench.turneval import speech_flags
    from rejoinder.client.measure import find_utterances
    from rejoinder.core.audio import SAMPLE_RATE
    from rejoinder.providers.local.silero import SileroVAD
    from rejoinder.turn.options import TurnOptions

    opts = TurnOptions()
    if quiet_dbfs is not None:
        opts = replace(opts, quiet_dbfs=quiet_dbfs)
    paths: dict[str, Callable[[PCM], PCM]] = {
        "16k": lambda pcm: pcm, "phone": over_phone, "webrtc": over_webrtc}
    vad = SileroVAD()
    rows = []
    try:
        for turn in load_script(script).turns:
            lead = SAMPLE_RATE // 2
            pcm = np.concatenate([np.zeros(lead, np.int16), turn.audio,
                                  np.zeros(2 * SAMPLE_RATE, np.int16)])
            found = find_utterances(turn.audio, SAMPLE_RATE, min_gap_s=10.0)
            eos = lead + round(found[-1].end_s * SAMPLE_RATE)
            row: dict[str, Any] = {"say": turn.say}
            for label, path in paths.items():
                heard = path(pcm)
                stream = vad.stream()
                try:
                    probs = [stream.push(heard[a:a + FRAME_SAMPLES]) for a in
                             range(0, len(heard) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
                finally:
                    stream.close()
                flags = np.array(speech_flags(heard, probs, opts))
                last = _last(flags) * FRAME_SAMPLES
                row[label] = round((last - eos) * 1000 / SAMPLE_RATE)
            rows.append(row)
    finally:
        vad.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rejoinder.bench.narrowband",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("wer", "vad", "split", "turns", "eos"))
    ap.add_argument("manifest", nargs="*",
                    help="split: turnset.py's manifest.json; turns: LABEL=TURNEVAL.json ...")
    ap.add_argument("--groups", default="librivox,commands,espeak",
                    help="comma-separated: librivox, commands, espeak")
    ap.add_argument("--emphasis", type=float, default=0.0,
                    help="wer: also the phone path with this pre-emphasis (a candidate fix)")
    ap.add_argument("--isolate", action="store_true",
                    help="wer: also the 8 kHz band without mu-law, and mu-law at 16 kHz")
    ap.add_argument("--script", default="librivox", help="eos: the bench script")
    ap.add_argument("--quiet-dbfs", type=float, help="eos: turn.quiet_dbfs (default: its own)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    result: Any
    if args.command == "eos":
        result = eos_offsets(args.script, args.quiet_dbfs)
        sys.stdout.write(f"{'turn':<26}{'16k':>7}{'phone':>7}{'webrtc':>8}   ms after the "
                         "caller's end of speech\n")
        for r in result:
            sys.stdout.write(f"{r['say'][:25]:<26}{r['16k']:>+7}{r['phone']:>+7}{r['webrtc']:>+8}\n")
        for label in ("16k", "phone", "webrtc"):
            values = [r[label] for r in result]
            sys.stdout.write(f"{label}: median {float(np.median(values)):+.0f} ms, "
                             f"max {max(values):+d} ms\n")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return 0
    if args.command == "turns":
        pairs = [arg.partition("=") for arg in args.manifest or []]
        if not pairs or any(not path for _, _, path in pairs):
            ap.error("turns: LABEL=TURNEVAL.json,...")
        sys.stdout.write(turneval_by_split({k: Path(v) for k, _, v in pairs}) + "\n")
        return 0
    if args.command == "split":
        if len(args.manifest) != 1:
            ap.error("split: give the manifest.json of turnset.py")
        for split, path in split_manifest(args.manifest[0]).items():
            sys.stdout.write(f"{split}: {path}\n")
        return 0
    items = utterances(tuple(args.groups.split(",")))
    if args.command == "vad":
        from rejoinder.turn.options import TurnOptions

        result = compare_vad(items, TurnOptions().vad_threshold)
        sys.stdout.write(vad_table(result) + "\n")
    else:
        from rejoinder.providers.local.whisper import WhisperSTT

        stt = WhisperSTT()
        paths: dict[str, Callable[[PCM], PCM]] = {"16k": lambda pcm: pcm, "phone": phone_path}
        if args.isolate:
            paths["8k band only"] = lambda pcm: phone_path(pcm, codec=False)
            paths["mu-law only"] = lambda pcm: ulaw_decode(ulaw_encode(pcm))
        if args.emphasis:
            a = args.emphasis
            paths[f"phone+emph {a:g}"] = lambda pcm: emphasise(phone_path(pcm), a)
        try:
            rows = measure_wer(items, stt.decode, paths)
        finally:
            stt.close()
        labels = list(paths)
        summary = wer_summary(rows, labels)
        sys.stdout.write(wer_table(summary, labels) + "\n")
        result = {"summary": summary, "items": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
