"""Post-call analytics against a labelled set of calls: per-field accuracy and job time.

    python -m rejoinder.bench.analytics                    # the embedded SmolLM2, as served
    python -m rejoinder.bench.analytics --config my.toml   # the [llm] of a config (openai)

The set (``bench/data/analytics.json``) holds short, redacted calls (bookings,
cancellations, complaints, sales leads, support, wrong numbers, escalations) with the
expected answers. A field is right when: intent, sentiment, urgency and escalate match
exactly; lead_score is within ``--tolerance`` (20) of the label; name contains the
labelled first name (or both are null); callback_number is a number when the call gave
one and null when it did not; the summary is non-empty and contains one of the labelled
keywords. Job time is one extraction as the worker runs it (prompt, decoding,
validation), without the store; an answer that fails validation counts as wrong on
every field.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from rejoinder.analytics.fields import parse_fields
from rejoinder.analytics.schema import (
    CallAnalytics,
    InvalidResult,
    answer_tokens,
    json_schema,
    messages,
    transcript_text,
    validate,
)
from rejoinder.config import AnalyticsOptions, load_config
from rejoinder.providers.base import LLM

FIELDS = ("valid", "intent", "sentiment", "escalate", "urgency", "lead_score", "name",
          "callback_number", "summary")


def load_set(path: Path | None = None) -> list[dict[str, Any]]:
    text = (path.read_text() if path is not None else
            (resources.files("rejoinder.bench") / "data" / "analytics.json").read_text())
    items: list[dict[str, Any]] = json.loads(text)
    return items


def score(result: CallAnalytics | None, expected: dict[str, Any],
          tolerance: int = 20) -> dict[str, bool]:
    """Per field: right or not (all wrong when the answer did not validate)."""
    if result is None:
        return {f: False for f in FIELDS}
    name = result.slots.name
    want_name = expected["name"]
    summary = result.summary.lower()
    return {
        "valid": True,
        "intent": result.intent == expected["intent"],
        "sentiment": result.sentiment == expected["sentiment"],
        "escalate": result.escalate == expected["escalate"],
        "urgency": result.slots.urgency == expected["urgency"],
        "lead_score": abs(result.lead_score - expected["lead_score"]) <= tolerance,
        "name": (not name) if want_name is None
        else bool(name) and want_name.lower() in str(name).lower(),
        "callback_number": bool(result.slots.callback_number) == expected["callback"],
        "summary": bool(summary) and any(k in summary for k in expected["keywords"]),
    }


def majority_baseline(items: list[dict[str, Any]], tolerance: int = 20) -> dict[str, float]:
    """The accuracy of always giving each field's most common label (the median lead
    score): what a model must beat to have read anything of the call."""
    labels = [item["expected"] for item in items]

    def best(key: str) -> Any:
        values = [e[key] for e in labels]
        return max(values, key=values.count)

    median_score = statistics.median(e["lead_score"] for e in labels)
    names = [e["name"] is None for e in labels]
    constant = CallAnalytics.model_validate({
        "summary": "-",
        "intent": best("intent"), "sentiment": best("sentiment"),
        "escalate": best("escalate"), "lead_score": int(median_score),
        "slots": {"name": None if sum(names) * 2 >= len(names) else "x",
                  "callback_number": "[phone number]" if best("callback") else None,
                  "reason": None, "urgency": best("urgency")}})
    rows = [score(constant, e, tolerance) for e in labels]
    return {f: round(sum(r[f] for r in rows) / len(rows), 3) for f in FIELDS
            if f not in ("valid", "summary")}


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def run(llm: LLM, items: list[dict[str, Any]], options: AnalyticsOptions,
              tolerance: int, verbose: bool) -> dict[str, Any]:
    extra = parse_fields(options.fields)
    schema = json_schema(extra)
    rows: list[dict[str, Any]] = []
    for item in items:
        transcript = transcript_text([(u, a) for u, a in item["turns"]])
        started = time.perf_counter()
        result: CallAnalytics | None
        error = None
        try:
            answer = await llm.complete_json(messages(transcript, extra), schema,
                                             answer_tokens(extra))
            result = validate(answer, extra)
        except InvalidResult as exc:
            result, error = None, exc.code
        took_ms = (time.perf_counter() - started) * 1000.0
        right = score(result, item["expected"], tolerance)
        rows.append({"id": item["id"], "ms": round(took_ms), "error": error, "right": right,
                     "result": None if result is None else result.model_dump()})
        if verbose:
            wrong = [f for f, ok in right.items() if not ok]
            print(f"{item['id']:24s} {took_ms:7.0f} ms  wrong: {', '.join(wrong) or '-'}",
                  file=sys.stderr)
    times = [r["ms"] for r in rows]
    return {
        "calls": len(rows),
        "model": llm.name,
        "majority_baseline": majority_baseline(items, tolerance),
        "accuracy": {f: round(sum(r["right"][f] for r in rows) / len(rows), 3)
                     for f in FIELDS},
        "job_ms": {"p50": round(statistics.median(times)), "p95": round(_percentile(times, 0.95)),
                   "max": max(times)},
        "rows": rows,
    }


def _llm(config_path: str | None, options: AnalyticsOptions) -> LLM:
    config = load_config(config_path, env={}) if config_path else None
    if config is not None and config.llm.provider == "openai":
        from rejoinder.providers.openai.llm import OpenAILLM

        c = config.llm
        return OpenAILLM(c.base_url, c.model, c.api_key, first_token_timeout_s=120.0)
    from rejoinder.analytics.worker import _embedded

    return _embedded(options, redact=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rejoinder.bench.analytics",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a rejoinder.toml whose [llm] and [analytics] to use")
    ap.add_argument("--set", type=Path, help="a labelled set (default: the packaged one)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N calls")
    ap.add_argument("--tolerance", type=int, default=20, help="of lead_score (default 20)")
    ap.add_argument("--json", type=Path, help="write every answer and verdict here")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per call")
    args = ap.parse_args(argv)
    options = load_config(args.config, env={}).analytics if args.config else AnalyticsOptions()
    items = load_set(args.set)
    if args.limit:
        items = items[:args.limit]
    llm = _llm(args.config, options)

    async def go() -> dict[str, Any]:
        try:
            return await run(llm, items, options, args.tolerance, args.verbose)
        finally:
            close = getattr(llm, "close", None)
            result = close() if close is not None else None
            if asyncio.iscoroutine(result):
                await result

    report = asyncio.run(go())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(f"{report['calls']} calls, model {llm.name}")
    print("accuracy: " + ", ".join(f"{f} {v:.0%}" for f, v in report["accuracy"].items()))
    print("always the most common label: " + ", ".join(
        f"{f} {v:.0%}" for f, v in report["majority_baseline"].items()))
    jm = report["job_ms"]
    print(f"job time: p50 {jm['p50']} ms, p95 {jm['p95']} ms, max {jm['max']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
