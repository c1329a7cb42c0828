"""The turn engine's end-of-turn policy, replayed offline on the spliced test set (turnset.py).

The decision is the engine's own code (``turn/policy.EndOfTurn``, see :func:`confirmations`);
what this module adds is the audio, the models' answers at fixed latencies, and the scoring.
Per 20 ms frame, as ``turn/engine.py`` does: Silero VAD decides speech, but quiet frames after
audible speech count as silence (``turn/level.py``; the utterance's peak level is kept for
the whole item here, where the engine starts it again after each reply); ``pause_s`` of silence
after at least ``min_speech_s`` of speech is a pause, where the end-of-turn model is asked
about the utterance so far (from onset minus the pre-roll, the last 8 s). It answers after
``model_latency_s`` (fixed, so runs are deterministic; the real mean is reported), and the
turn is confirmed at once if P >= ``confirm_p``, at ``end_silence_s`` if P >= ``hold_p``,
else at ``max_silence_s``. Without a model, ``end_silence_s`` of silence confirms it. With
``hold_unfinished`` (the words), Whisper transcribes the utterance at each pause, as the
engine's speculation does; the transcript counts from ``words_latency_s`` later (fixed; the
bench's median from pause to transcript), no turn is confirmed before it, and one that
trails off (``TurnOptions.is_unfinished``) only at ``max_silence_s``. A voiced frame before
the confirmation cancels it.

Scoring per item: a confirmation inside a manifest *pause* is a **cut-off**; one before the
end elsewhere is a cut-off *in speech* (such as just after a pause, before the VAD hears the
caller again) when the VAD hears the caller before the end, else an *early end*. An item is
cut off if it has either kind. A cut-off the caller ends by going on within ``take_back_s``
of it takes the turn back (``turn/engine.py``), even if the reply's audio started at once:
the items with a cut-off they *cannot* take back are counted apart (``items_cut_off_heard``).
The first confirmation in (or early before) the *end* silence gives the **end-of-turn
delay**, from the true end of speech (``start_s``); ``vad_lag`` is how far the VAD's last
voiced frame lags that end (part of the delay). Run it with ``python -m
rejoinder.bench.turneval MANIFEST|build [--json OUT]`` (``--phone``: as heard over a phone line).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import heapq
import json
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rejoinder.bench import turnset
from rejoinder.bench.narrowband import split_of
from rejoinder.core.audio import FRAME_SAMPLES, PCM, SAMPLE_RATE, read_wav
from rejoinder.core.telephony import phone_path
from rejoinder.providers.base import LLM, ChatMessage
from rejoinder.turn.grammar import same_words
from rejoinder.turn.level import LevelGate
from rejoinder.turn.options import TurnOptions
from rejoinder.turn.policy import (
    Act,
    EndOfTurn,
    EndP,
    EndWeights,
    Heard,
    QuietTail,
    words_unfinished,
)
from rejoinder.turn.policy import Words as Said

WINDOW = 8 * SAMPLE_RATE  # the end-of-turn model hears the last 8 s, as in the engine
Prob = Callable[[int, int], float]  # P(turn complete) for the samples [start, end)
# The transcript of [start, end): whether it is unfinished, or all the fitted signal reads.
Words = Callable[[int, int], "bool | Heard"]


@dataclass(frozen=True)
class Confirmation:
    at: int                     # sample at which the turn was confirmed
    last_voiced: int            # end of the last voiced frame: the silence counts from here
    p: float | None             # the model's answer; None: silence alone decided
    resumed: int | None = None  # start of the next voiced frame, if the caller went on


def confirmations(speech: Sequence[bool], opts: TurnOptions, prob: Prob | None, *,
                  latency_s: float, words: Words | None = None, words_latency_s: float = 0.0,
                  frame: int = FRAME_SAMPLES, weights: EndWeights | None = None,
                  restarts: Counter[str] | None = None) -> list[Confirmation]:
    """Where the engine confirms turns, for per-frame speech flags; ``prob`` None: silence only.

    The engine's own policy (``turn/policy.EndOfTurn``) decides. The model answers
    ``latency_s`` after it is asked. ``words`` (with ``opts.hold_unfinished``): whether the
    speculative transcript, taken when a speculation starts, is unfinished; it is in
    ``words_latency_s`` later. A frame of silence arrives at its end: an answer or a
    transcript that arrives within it is heard before it, one at its end after it; the
    caller's voice is heard from the start of its frame (it cancels an answer arriving
    within it, which is stale once the caller speaks). As in the engine, a
    speculation the caller talks over for ``min_speech_s`` is dropped; one they made a
    shorter sound after is taken again at their next pause (its transcript then includes
    the sound; the earlier one, still on its way, is not heard); after a confirmation, the
    caller's next voiced frame drops the reply (they were only pausing) and the utterance
    goes on. ``restarts`` counts the speculations taken again (``taken``) and, of those,
    the ones whose stale transcript was in and had the same words as the new one
    (``same_words``: a reply that need not be thrown away)."""
    check_words = words is not None and opts.hold_unfinished and opts.speculate
    policy = EndOfTurn(replace(opts, hold_unfinished=check_words), model=prob is not None,
                       weights=weights)
    latency = round(latency_s * SAMPLE_RATE)
    words_latency = round(words_latency_s * SAMPLE_RATE)
    preroll = math.ceil(opts.preroll_s * SAMPLE_RATE / frame) * frame  # whole ring frames
    min_run = round(opts.min_speech_s * SAMPLE_RATE)
    out: list[Confirmation] = []
    is_open = waiting = False
    origin = start = last = 0
    spec: Said | None = None  # the speculative reply's transcript; None: no reply
    spec_id = 0
    spec_heard: tuple[int, Heard] | None = None  # (arrives at, words) of the speculation
    # Signals on their way: (arrives at, order, kind, pause or speculation id, value).
    on_way: list[tuple[int, int, str, int, float | Heard]] = []

    def confirm(at: int) -> None:
        nonlocal waiting
        out.append(Confirmation(at, last, policy.p))
        waiting = True

    def deliver(until: int, *, inclusive: bool) -> None:
        nonlocal spec
        while on_way and (on_way[0][0] < until or (inclusive and on_way[0][0] == until)):
            at, _, kind, ident, value = heapq.heappop(on_way)
            if waiting:
                continue
            if kind == "answer":
                assert isinstance(value, float)
                if not policy.answer(ident, value):
                    continue
            elif ident != spec_id or spec is None:
                continue  # the transcript of a dropped speculation
            else:
                assert isinstance(value, Heard)
                policy.hear(value)
                spec = Said.UNFINISHED if value.unfinished else Said.FINISHED
            if policy.done(spec):
                confirm(at)

    for i, voiced in enumerate(speech):
        a, e = i * frame, (i + 1) * frame
        if not voiced:
            deliver(e, inclusive=False)
        if voiced:
            if not is_open:  # onset: the ring holds the pre-roll since the last close
                is_open, start = True, max(origin, a - preroll)
            if waiting:
                out[-1] = replace(out[-1], resumed=a)
                waiting, spec = False, None
                policy.overridden()  # (the engine: after min_speech_s of it, before a pause)
            policy.speech(frame)
            last = e
            if spec is not None and policy.run >= min_run:
                spec = None  # the caller goes on: the speculation was wasted
        elif is_open and not waiting:
            policy.quiet(frame)
            act = policy.decide(spec)
            if act & Act.CLOSE:
                is_open, origin = False, e  # a click or a breath
                policy.new_utterance()
            if act & Act.SPECULATE:
                stale = spec_heard if spec is not None else None
                spec, spec_id, spec_heard = Said.PENDING, spec_id + 1, None
                if check_words:
                    assert words is not None
                    got = words(start, e)
                    heard = got if isinstance(got, Heard) else Heard("", got)
                    heapq.heappush(on_way, (e + words_latency, i, "words", spec_id, heard))
                    spec_heard = (e + words_latency, heard)
                    if restarts is not None and stale is not None:
                        restarts["taken"] += 1
                        restarts["same_words"] += (stale[0] <= e and same_words(
                            stale[1].text, heard.text))
            if act & Act.ASK:
                assert prob is not None
                heapq.heappush(on_way, (e + latency, i, "answer", policy.pause_id,
                                        float(prob(max(start, e - WINDOW), e))))
            if act & Act.CONFIRM:
                confirm(e)
        deliver(e, inclusive=True)
    return out


def end_of_message(llm: LLM, context: list[ChatMessage]) -> EndP:
    """``LLM.turn_end_p`` of a caller message after ``context``, for the words check: with
    no time limit and once per text. On a loaded machine the question can take longer than
    a call's limit (``turn_end_timeout_s``), and a verdict that depends on load would move
    the measure by itself (the time the words take is ``words_latency_s``, fixed)."""
    llm.turn_end_timeout_s = 3600.0
    known: dict[str, float | None] = {}

    async def end_p(text: str) -> float | None:
        if text not in known:
            known[text] = await llm.turn_end_p([*context, ChatMessage("user", text)])
        return known[text]

    return end_p


def credit_quiet_tails(speech: Sequence[bool], audible: Sequence[bool],
                       cap: int) -> list[bool]:
    """The speech flags as the engine counts them (``turn/policy.QuietTail``, ``cap`` in
    frames): once the utterance has had an audible frame, up to ``cap`` quiet frames in a
    row that the VAD calls speech are silence."""
    tail = QuietTail(cap)
    out = []
    for voiced, loud in zip(speech, audible, strict=True):
        if voiced:
            out.append(not tail.quiet(1, loud))
        else:
            tail.silent()
            out.append(False)
    return out


def speech_flags(pcm: PCM, probs: Sequence[float], opts: TurnOptions) -> list[bool]:
    """Per frame, speech as the engine counts it: the VAD's verdict, less the quiet tail
    (the level gate, ``turn/level.py``, with the policy's own ``quiet_dbfs``)."""
    gate = LevelGate(opts.quiet_dbfs)
    flags, audible = [], []
    for k, p in enumerate(probs):
        frame = pcm[k * FRAME_SAMPLES:(k + 1) * FRAME_SAMPLES]
        flags.append(p >= opts.vad_threshold)
        audible.append(flags[-1] and gate.audible(frame))
        if not flags[-1]:
            gate.silence(frame)
    cap = round(opts.quiet_tail_s * SAMPLE_RATE / FRAME_SAMPLES)
    return credit_quiet_tails(flags, audible, cap)


def evaluate(manifest_path: str | Path, options: TurnOptions | Sequence[TurnOptions], *,
             use_model: bool, model_latency_s: float,
             words_latency_s: float = 0.24, phone: bool = False,
             vad_rate: int = SAMPLE_RATE,
             weights: EndWeights | None = None) -> list[dict[str, Any]]:
    """Replay every item of the manifest through each policy of ``options``; a report (a
    dict) per policy. With ``hold_unfinished``, Whisper transcribes the utterance at each
    pause. The model's answer and Whisper's transcript for a stretch of audio are computed
    once and shared by the policies (a sweep costs little more than one policy); the words
    check on a transcript runs per policy, since its options may differ. ``phone``: every
    item goes through the phone path first (8 kHz mu-law, ``core/telephony.phone_path``);
    ``vad_rate`` 8000: Silero runs in its 8 kHz mode (``SileroOptions.sample_rate``).
    ``weights``: the fitted signal's (``end_signal = "fitted"``; default: those that ship).
    The LLM's P of the message ending is recorded for every transcript (``said``)."""
    variants = [options] if isinstance(options, TurnOptions) else list(options)
    options = variants[0]
    from rejoinder.config import DEFAULT_SYSTEM_PROMPT
    from rejoinder.providers.local.silero import SileroOptions, SileroVAD
    from rejoinder.providers.local.smart_turn import SmartTurn
    from rejoinder.providers.local.smollm import SmolLM
    from rejoinder.providers.local.whisper import WhisperSTT

    manifest = Path(manifest_path)
    vad = SileroVAD(SileroOptions(sample_rate=vad_rate))
    model = SmartTurn() if use_model else None
    words = options.hold_unfinished and options.speculate
    stt = WhisperSTT() if words else None
    llm = SmolLM() if words else None
    if weights is None and any(v.end_signal == "fitted" for v in variants):
        weights = EndWeights.load()
    system = ChatMessage("system", DEFAULT_SYSTEM_PROMPT)
    end_p = None if llm is None else end_of_message(llm, [system])
    if llm is not None:
        asyncio.run(llm.warm([system]))  # as a call does before the caller's first word
    times: list[float] = []

    heard: dict[tuple[str, int, int], str] = {}  # transcripts, by item and samples
    answers: dict[tuple[str, int, int], float] = {}  # the model's, by item and samples

    def unfinished(file: str, pcm: PCM, opts: TurnOptions, said: list[dict[str, Any]],
                   start: int, end: int) -> Heard:
        """The engine's words check on Whisper's transcript of [start, end), and the LLM's
        P of the message ending there (for the fitted signal)."""
        assert stt is not None
        key = (file, start, end)
        if key not in heard:
            heard[key] = stt.decode(pcm[start:end])
        text = heard[key]
        verdict = asyncio.run(words_unfinished(opts, text, punctuated=stt.punctuates,
                                               end_p=end_p))
        p = asyncio.run(end_p(text)) if end_p is not None and text else None
        said.append({"at_s": end / SAMPLE_RATE, "text": text, "unfinished": verdict,
                     "end_p": p})
        return Heard(text, verdict, p)

    def ask(file: str, pcm: PCM, asked: list[tuple[float, float]], start: int,
            end: int) -> float:
        assert model is not None
        key = (file, start, end)
        if key not in answers:
            t0 = time.perf_counter()
            answers[key] = model.predict(pcm[start:end])
            times.append(time.perf_counter() - t0)
        p = answers[key]
        asked.append((end / SAMPLE_RATE, p))
        return p

    results: list[list[dict[str, Any]]] = [[] for _ in variants]
    try:
        for item in turnset.load(manifest):
            pcm = read_wav(manifest.parent / item.file)
            if phone:
                pcm = phone_path(pcm)
            stream = vad.stream()
            try:
                probs = [stream.push(pcm[a:a + FRAME_SAMPLES])
                         for a in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
            finally:
                stream.close()
            for opts, out in zip(variants, results, strict=True):
                flags = speech_flags(pcm, probs, opts)
                asked: list[tuple[float, float]] = []  # (when, P) for each question
                said: list[dict[str, Any]] = []  # the transcript at each pause
                prob = (None if model is None
                        else functools.partial(ask, item.file, pcm, asked))
                check = (None if stt is None
                         else functools.partial(unfinished, item.file, pcm, opts, said))
                restarts: Counter[str] = Counter()
                found = confirmations(flags, opts, prob, latency_s=model_latency_s,
                                      words=check, words_latency_s=words_latency_s,
                                      weights=weights, restarts=restarts)
                out.append({**_score(item, found, opts.take_back_s), "asked": asked,
                            "said": said,
                            "restarts": restarts["taken"],
                            "restarts_same_words": restarts["same_words"]})
    finally:
        vad.close()
        if model is not None:
            model.close()
        if stt is not None:
            stt.close()
        if llm is not None:
            llm.close()
    policy = "smart-turn" if use_model else "silence-only"
    if stt is not None:
        policy += "+words"
    reports = []
    for opts, rs in zip(variants, results, strict=True):
        groups = sorted({r["group"] for r in rs})
        changed = {k: v for k, v in dataclasses.asdict(opts).items()
                   if v != dataclasses.asdict(options)[k]}
        reports.append({
            "manifest": str(manifest),
            "policy": policy + "".join(f" {k}={v}" for k, v in changed.items()),
            "options": dataclasses.asdict(opts), "model_latency_s": model_latency_s,
            "audio": "phone" if phone else "16k", "vad_rate": vad_rate,
            "words_latency_s": words_latency_s if stt is not None else None,
            "predict_calls": len(times),
            "predict_ms_mean": 1000 * float(np.mean(times)) if times else None,
            "overall": _summary(rs),
            # Tuning and held-out parts (different recordings, speakers and voices): every
            # default is chosen on the tuning part only.
            "by_split": {s: _summary([r for r in rs if split_of(r["file"]) == s])
                         for s in ("tune", "held-out")},
            "by_source": {g: _summary([r for r in rs if r["group"] == g]) for g in groups},
            "items": rs,
        })
    return reports


def _group(source: str) -> str:
    """``espeak-ng en-us 165 wpm clause`` -> ``espeak-clause``; others as they are."""
    words = source.split()
    return words[0] if len(words) == 1 else f"{words[0].removesuffix('-ng')}-{words[-1]}"


def _score(item: turnset.TurnItem, found: list[Confirmation],
           take_back_s: float = 0.0) -> dict[str, Any]:
    pauses = [s for s in item.silences if s.kind == "pause"]
    end = next(s for s in item.silences if s.kind == "end")
    cuts: list[dict[str, Any]] = []  # "pause": the index of the pause it fell in, or None
    hit = None
    for c in found:
        t = c.at / SAMPLE_RATE
        inside = [k for k, s in enumerate(pauses) if s.start_s <= t < s.end_s]
        if t >= end.start_s or (not inside and (c.resumed is None
                                                or c.resumed / SAMPLE_RATE >= end.start_s)):
            hit = c  # the end of the turn (early when t is before it)
            break
        # The caller goes on at the pause's end (before: the manifest's end of speech).
        goes_on = pauses[inside[0]].end_s - t if inside else None
        cuts.append({"at_s": round(t, 3), "pause": inside[0] if inside else None, "p": c.p,
                     "heard": goes_on is None or goes_on >= take_back_s})
    in_pause = [c["pause"] for c in cuts if c["pause"] is not None]
    return {
        "file": item.file, "source": item.source, "group": _group(item.source),
        "pauses": len(pauses), "cuts": cuts, "cutoffs": len(in_pause),
        "cut_off_heard": any(c["heard"] for c in cuts),
        "pauses_cut": len(set(in_pause)), "cutoffs_in_speech": len(cuts) - len(in_pause),
        "end": None if hit is None else {
            "at_s": hit.at / SAMPLE_RATE, "delay_ms": 1000 * (hit.at / SAMPLE_RATE - end.start_s),
            "vad_lag_ms": 1000 * (hit.last_voiced / SAMPLE_RATE - end.start_s), "p": hit.p},
    }


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    paused = [r for r in results if r["pauses"]]
    cut_items = sum(1 for r in paused if r["cuts"])
    pauses = sum(r["pauses"] for r in results)
    ends = [r["end"] for r in results if r["end"] is not None]
    delays = np.array([e["delay_ms"] for e in ends])
    return {
        "items": len(results), "items_with_pause": len(paused), "pauses": pauses,
        "items_cut_off": cut_items, "cut_off_rate": cut_items / len(paused) if paused else None,
        # ...of which a cut-off the caller cannot take back (they go on take_back_s or more
        # after it; the reply's audio may start later still)
        "items_cut_off_heard": sum(1 for r in paused if r["cut_off_heard"]),
        "cutoffs": sum(r["cutoffs"] for r in results),
        "pauses_cut": sum(r["pauses_cut"] for r in results),
        "cutoffs_per_pause": sum(r["cutoffs"] for r in results) / pauses if pauses else None,
        "cutoffs_in_speech": sum(r["cutoffs_in_speech"] for r in results),
        # Whisper passes for the words check: one per speculation, so one per pause.
        "transcripts": sum(len(r["said"]) for r in results),
        # Speculations taken again at a later pause; of those, the ones whose stale
        # transcript was in and said the same words (its reply need not have been redone).
        "restarts": sum(r["restarts"] for r in results),
        "restarts_same_words": sum(r["restarts_same_words"] for r in results),
        "ends": len(ends), "missed_ends": len(results) - len(ends),
        "early_ends": int((delays < 0).sum()),
        "delay_ms": None if not ends else {
            "mean": float(delays.mean()), "p50": float(np.percentile(delays, 50)),
            "p95": float(np.percentile(delays, 95))},
        "vad_lag_ms_mean": float(np.mean([e["vad_lag_ms"] for e in ends])) if ends else None,
    }


def table(reports: list[dict[str, Any]]) -> str:
    head = (f"{'policy':<19}{'source':<20}{'items':>6}{'w/pause':>8}{'cut-off rate':>17}"
            f"{'cuts/pause':>11}{'in-speech':>10}{'delay mean/p50/p95 ms':>24}{'vad lag':>9}"
            f"{'missed':>7}{'early':>6}")
    lines = [head]
    for rep in reports:
        splits = [(f"split {k}", v) for k, v in rep.get("by_split", {}).items()]
        for name, s in [("overall", rep["overall"]), *splits, *rep["by_source"].items()]:
            rate = ("-" if s["cut_off_rate"] is None else
                    f"{s['items_cut_off']}/{s['items_with_pause']} {100 * s['cut_off_rate']:.1f}%")
            cpp = "-" if s["cutoffs_per_pause"] is None else f"{s['cutoffs_per_pause']:.3f}"
            d = s["delay_ms"]
            delay = "-" if d is None else f"{d['mean']:.0f}/{d['p50']:.0f}/{d['p95']:.0f}"
            lag = "-" if s["vad_lag_ms_mean"] is None else f"{s['vad_lag_ms_mean']:.0f}"
            lines.append(f"{rep['policy']:<19}{name:<20}{s['items']:>6}{s['items_with_pause']:>8}"
                         f"{rate:>17}{cpp:>11}{s['cutoffs_in_speech']:>10}{delay:>24}{lag:>9}"
                         f"{s['missed_ends']:>7}{s['early_ends']:>6}")
        if rep["predict_ms_mean"] is not None:
            lines.append(f"  {rep['policy']}: predict() mean {rep['predict_ms_mean']:.1f} ms over "
                         f"{rep['predict_calls']} calls (scored with a fixed "
                         f"{1000 * rep['model_latency_s']:.0f} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rejoinder.bench.turneval", description=__doc__
                                 .splitlines()[0])
    ap.add_argument("manifest", help="manifest.json of turnset.py, or 'build' for a fresh set")
    ap.add_argument("--silence-only", action="store_true", help="only the silence policy")
    ap.add_argument("--json", type=Path, help="write the reports here")
    ap.add_argument("--model-latency-s", type=float, default=0.11)
    ap.add_argument("--words-latency-s", type=float, default=0.24,
                    help="pause to speculative transcript (bench median, stt_final - vad_end)")
    ap.add_argument("--phone", action="store_true",
                    help="hear each item through the phone path (16 -> 8 kHz mu-law -> 16 kHz)")
    ap.add_argument("--vad-rate", type=int, choices=(8000, SAMPLE_RATE), default=SAMPLE_RATE,
                    help="Silero's mode (8000 for phone calls)")
    ap.add_argument("--no-words", action="store_true",
                    help="turn.hold_unfinished off: the transcript does not hold turns")
    knob_names = ("confirm_p", "hold_p", "end_silence_s", "max_silence_s", "pause_s",
                  "quiet_tail_s", "model_after_s", "reask_s", "finished_silence_s",
                  "end_threshold", "patience_s", "quiet_dbfs", "take_back_s")
    for knob in knob_names:
        ap.add_argument(f"--{knob.replace('_', '-')}", type=float, dest=knob)
    ap.add_argument("--sweep", metavar="KNOB=V1,V2,...",
                    help="also score these values of one knob (e.g. finished_silence_s=0.5,0.6),"
                         " reusing the model's answers and the transcripts")
    ap.add_argument("--end-signal", choices=("rules", "fitted"),
                    help="how the signals are combined (turn.end_signal)")
    ap.add_argument("--weights", type=Path,
                    help="the fitted signal's weights (default: turn/end_weights.json)")
    args = ap.parse_args(argv)
    knobs = {k: getattr(args, k) for k in knob_names}
    opts = replace(TurnOptions(), **{k: v for k, v in knobs.items() if v is not None},
                   hold_unfinished=not args.no_words)
    if args.end_signal:
        opts = replace(opts, end_signal=args.end_signal)
    weights = None if args.weights is None else EndWeights.load(args.weights)
    sweep: list[dict[str, Any]] = [{}]
    if args.sweep:
        knob, _, values = args.sweep.partition("=")
        if knob not in knob_names or not values:
            ap.error(f"--sweep: KNOB=V1,V2 with KNOB one of {', '.join(knob_names)}")
        sweep += [{knob: float(v)} for v in values.split(",")]
    policies = [False] if args.silence_only else [True, False]
    with tempfile.TemporaryDirectory() as tmp:
        manifest = turnset.build(tmp) if args.manifest == "build" else Path(args.manifest)
        reports = [report for m in policies for report in evaluate(
            manifest, [replace(opts, model="smart-turn" if m else "none", **change)
                       for change in sweep],
            use_model=m, model_latency_s=args.model_latency_s,
            words_latency_s=args.words_latency_s, phone=args.phone, vad_rate=args.vad_rate,
            weights=weights)]
    sys.stdout.write(table(reports) + "\n")
    if args.json:
        args.json.write_text(json.dumps({r["policy"]: r for r in reports}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
