"""Fit the weights of the fitted end-of-turn signal (``turn/end_weights.json``).

The signal (``turn.end_signal = "fitted"``, ``turn/policy.py``) is a logistic model of
P(the turn is over) at a moment of silence, from :func:`rejoinder.turn.policy.end_features`:
the silence so far, smart-turn's P, the words check's verdict, the LLM's P of the message
ending there, whether the transcript is a question or has no closing punctuation. It is
fitted on the **tuning part** of turneval's set only (``narrowband.split_of``), from a
``turneval --json`` report of the rules policy, which records at every pause what the
engine hears: the speculation's transcript (its verdict and the LLM's P) and the model's
answer.

Rows: for every speculation that starts in a silence of the manifest, one row per 20 ms
of that silence from the moment both signals are in (the transcript ``words_latency_s``
after the pause, the model ``model_latency_s`` after it is asked) until the caller goes on
(a mid-sentence pause: not an end) or ``max_silence_s`` (the end of the turn: an end). Each
silence weighs the same in all, however many rows it gives. A little L2 (``--l2``) keeps
the weights sane on a set this small. Run it with
``python -m rejoinder.bench.fitturn TURNEVAL.json MANIFEST [--out PATH]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rejoinder.bench import turnset
from rejoinder.bench.narrowband import split_of
from rejoinder.turn.policy import Heard, end_features

FEATURES = ("bias", "silence_s", "turn_logit", "unfinished", "llm_logit", "question", "open")
STEP_S = 0.02
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "turn" / "end_weights.json"


def rows(report: dict[str, Any], manifest: Path, split: str = "tune"
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Features, labels (1: the end of the turn), row weights, and the number of silences."""
    o = report["options"]
    ready = max(o["pause_s"] + (report["words_latency_s"] or 0.0),
                o["model_after_s"] + report["model_latency_s"])
    items = {i.file: i for i in turnset.load(manifest)}
    xs: list[list[float]] = []
    ys: list[float] = []
    ws: list[float] = []
    events = 0
    for result in report["items"]:
        if split_of(result["file"]) != split:
            continue
        item = items[result["file"]]
        for said in result["said"]:
            quiet_from = said["at_s"] - o["pause_s"]  # where the silence began
            silence = next((s for s in item.silences
                            if s.start_s - 0.1 <= quiet_from < s.end_s), None)
            if silence is None:
                continue  # a gap inside a word: the caller goes on at once
            end = silence.kind == "end"
            last = o["max_silence_s"] if end else min(silence.end_s - quiet_from,
                                                      o["max_silence_s"])
            asked = [p for when, p in result["asked"]
                     if abs(when - (quiet_from + o["model_after_s"])) < 0.03]
            heard = Heard(said["text"], said["unfinished"], said.get("end_p"))
            grid = np.arange(ready, last, STEP_S)
            if not len(grid):
                continue
            events += 1
            for s in grid:
                f = end_features(float(s), asked[0] if asked else None, heard)
                xs.append([f[name] for name in FEATURES])
                ys.append(float(end))
                ws.append(1.0 / len(grid))
    return np.array(xs), np.array(ys), np.array(ws), events


def fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float = 0.1,
        iterations: int = 100) -> np.ndarray:
    """Weighted logistic regression by Newton's method; the bias is not penalised."""
    beta = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -60, 60)))
        grad = x.T @ (w * (y - p)) - penalty * beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta += step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return beta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rejoinder.bench.fitturn",
                                 description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("report", type=Path, help="turneval --json output (the rules policy)")
    ap.add_argument("manifest", type=Path, help="the manifest.json it was run on")
    ap.add_argument("--policy", default=None,
                    help="which report of the file (default: the first with a model)")
    ap.add_argument("--l2", type=float, default=0.1)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    reports = json.loads(args.report.read_text())
    name = args.policy or next(k for k in reports if k.startswith("smart-turn"))
    x, y, w, events = rows(reports[name], args.manifest)
    if not events:
        ap.error("no silences of the tuning part in the report")
    beta = fit(x, y, w, args.l2)
    p = 1.0 / (1.0 + np.exp(-(x @ beta)))
    loss = -float(np.sum(w * (y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))))
    out = {
        "weights": {n: round(float(b), 4) for n, b in zip(FEATURES, beta, strict=True)},
        "fitted_on": "turneval's set, tuning part (narrowband.split_of)",
        "policy": name, "silences": events, "ends": int(round(float(np.sum(w * y)))),
        "rows": len(y), "l2": args.l2, "log_loss_per_silence": round(loss / events, 4),
        "command": "python -m rejoinder.bench.fitturn " + " ".join(
            sys.argv[1:] if argv is None else argv),
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    sys.stdout.write(json.dumps(out["weights"]) + f"\n{events} silences, {len(y)} rows; "
                     f"log loss {out['log_loss_per_silence']} per silence -> {args.out}\n")
    return 0 if math.isfinite(loss) else 1


if __name__ == "__main__":
    raise SystemExit(main())
