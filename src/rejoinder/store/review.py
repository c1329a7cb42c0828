"""The weekly review and the latency statistics, computed from the call records.

    review(turns, tool_statuses, options)   each target with its value, threshold, verdict
    latency(turns, bucket)                  p50/p95 of every stage, overall and per bucket

A turn's voice-to-voice latency is the one its caller measured where known (the page
posts it back), else the server's ``first_audio_sent`` (ms after the caller's end of
speech): the server's own figure misses the network and the caller's jitter buffer, so
the review says how many of its turns were measured by the caller.

Percentiles interpolate linearly between the closest ranks (numpy's default), so a set
of values gives the same figure here, in the benchmark report and in a spreadsheet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from rejoinder.config import ReviewOptions
from rejoinder.store.models import STAGE_COLUMNS
from rejoinder.store.queries import TurnStat

Bucket = Literal["hour", "day"]
#: The stages the latency view plots: the server's, then voice-to-voice.
LATENCY_SERIES = (*STAGE_COLUMNS, "v2v")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linearly interpolated percentile, ``q`` in 0..100; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return round(value, 3)


def v2v_ms(turn: TurnStat) -> float | None:
    """The caller's measured latency, else the server's first audio sent; None: neither."""
    if turn.caller_v2v_ms is not None:
        return turn.caller_v2v_ms
    return turn.stages_ms.get("first_audio_sent")


#: How each target compares its value with its threshold (the value passes when
#: ``value <op> threshold``).
OPS = {"v2v_p95": "<=", "phrase_cache": ">=", "llm_prefix_reuse": ">=", "restart_rate": "<",
       "barge_in_stop": "<=", "tool_timeouts": "<=", "cold_start_tax": "<="}


def _check(key: str, label: str, value: float | None, threshold: float, unit: str,
           ok: bool | None, n: int, detail: str) -> dict[str, object]:
    status = "no_data" if ok is None else "pass" if ok else "fail"
    return {"key": key, "label": label, "value": value, "op": OPS[key],
            "threshold": threshold, "unit": unit, "status": status, "n": n, "detail": detail}


def _not_recorded(key: str, label: str, threshold: float, unit: str,
                  detail: str) -> dict[str, object]:
    return {"key": key, "label": label, "value": None, "op": OPS[key],
            "threshold": threshold, "unit": unit, "status": "not_recorded", "n": 0,
            "detail": detail}


def _rate(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def review(turns: Sequence[TurnStat], tool_statuses: Iterable[str], options: ReviewOptions,
           llm_prompt: Mapping[str, int] | None = None) -> list[dict[str, object]]:
    """Each target of the review: ``status`` is pass, fail, no_data (no turn to judge) or
    not_recorded (the records do not hold it). ``llm_prompt``: the embedded LLM's prompt
    token counters since the server started (``cached``, ``evaluated``), if it has them."""
    checks: list[dict[str, object]] = []

    measured = [v for t in turns if (v := v2v_ms(t)) is not None]
    by_caller = sum(1 for t in turns if t.caller_v2v_ms is not None)
    p95 = percentile(measured, 95)
    checks.append(_check(
        "v2v_p95", "Voice-to-voice p95", p95, options.v2v_p95_ms, "ms",
        None if p95 is None else p95 <= options.v2v_p95_ms, len(measured),
        f"{len(measured)} turns, {by_caller} measured by the caller, the rest at the server "
        "(first audio sent)"))

    known = [t.tts_cached for t in turns if t.tts_cached is not None]
    hit_rate = _rate(sum(known), len(known))
    checks.append(_check(
        "phrase_cache", "Phrase-cache hit rate", hit_rate, options.phrase_cache_min, "ratio",
        None if hit_rate is None else hit_rate >= options.phrase_cache_min, len(known),
        f"{sum(known)} of {len(known)} replies began with a cached phrase"))

    cached = int((llm_prompt or {}).get("cached", 0))
    evaluated = int((llm_prompt or {}).get("evaluated", 0))
    if cached + evaluated:
        reuse = _rate(cached, cached + evaluated)
        assert reuse is not None
        checks.append(_check(
            "llm_prefix_reuse", "LLM prefix-cache reuse", reuse, options.llm_prefix_reuse_min,
            "ratio", reuse >= options.llm_prefix_reuse_min, cached + evaluated,
            f"since the server started, not over the range: {cached} of "
            f"{cached + evaluated} prompt tokens reused (the call records do not hold it)"))
    else:
        checks.append(_not_recorded(
            "llm_prefix_reuse", "LLM prefix-cache reuse", options.llm_prefix_reuse_min,
            "ratio", "not recorded: the call records do not hold it, and this LLM reports "
            "no prefix-cache counters"))

    speculative = [t for t in turns if t.speculation is not None]
    restarted = sum(1 for t in speculative if t.speculation == "restarted")
    restart_rate = _rate(restarted, len(speculative))
    checks.append(_check(
        "restart_rate", "Cancel-and-restart rate", restart_rate, options.restart_max, "ratio",
        None if restart_rate is None else restart_rate < options.restart_max,
        len(speculative), f"{restarted} of {len(speculative)} speculative turns restarted"))

    # The server's figure: the transport's own delay to the caller comes on top (rejoinder
    # bench measures the whole at the caller).
    stops = [t.barge_in_stop_ms for t in turns if t.barge_in_stop_ms is not None]
    stop_p95 = percentile(stops, 95)
    checks.append(_check(
        "barge_in_stop", "Barge-in stop time p95", stop_p95, options.barge_in_stop_ms, "ms",
        None if stop_p95 is None else stop_p95 <= options.barge_in_stop_ms, len(stops),
        f"{len(stops)} turns the caller spoke over: their speech until the agent's audio "
        "was held, at the server (the transport's delay comes on top)"))

    statuses = list(tool_statuses)
    timeouts = sum(1 for s in statuses if s == "timeout")
    checks.append(_check(
        "tool_timeouts", "Tool timeouts", float(timeouts), options.tool_timeouts_max, "count",
        timeouts <= options.tool_timeouts_max, len(statuses),
        f"{timeouts} of {len(statuses)} tool calls timed out"))

    first, steady = _first_and_steady(turns)
    first_p95, steady_p95 = percentile(first, 95), percentile(steady, 95)
    tax = None if first_p95 is None or steady_p95 is None else round(first_p95 - steady_p95, 3)
    checks.append(_check(
        "cold_start_tax", "Cold-start tax", tax, options.cold_start_tax_ms, "ms",
        None if tax is None else tax <= options.cold_start_tax_ms, len(first) + len(steady),
        f"first-turn p95 {_ms(first_p95)} ({len(first)} calls) minus later turns' p95 "
        f"{_ms(steady_p95)} ({len(steady)} turns)"))
    return checks


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:g} ms"


def _first_and_steady(turns: Sequence[TurnStat]) -> tuple[list[float], list[float]]:
    """Voice-to-voice of each call's first answered turn, and of its later ones."""
    first: list[float] = []
    steady: list[float] = []
    seen: set[str] = set()
    for t in sorted(turns, key=lambda t: (t.call_id, t.seq)):
        value = v2v_ms(t)
        if value is None:
            continue
        if t.call_id in seen:
            steady.append(value)
        else:
            seen.add(t.call_id)
            first.append(value)
    return first, steady


def bucket_start(at: datetime, bucket: Bucket) -> datetime:
    at = at.astimezone(UTC)
    if bucket == "day":
        return at.replace(hour=0, minute=0, second=0, microsecond=0)
    return at.replace(minute=0, second=0, microsecond=0)


def _values(turns: Iterable[TurnStat], stage: str) -> list[float]:
    if stage == "v2v":
        return [v for t in turns if (v := v2v_ms(t)) is not None]
    return [t.stages_ms[stage] for t in turns if stage in t.stages_ms]


def latency(turns: Sequence[TurnStat], bucket: Bucket) -> dict[str, object]:
    """p50/p95 (and n) of each stage over all turns, and per hour or day bucket (only the
    buckets that hold turns, in order, as ISO times of their start)."""
    groups: dict[datetime, list[TurnStat]] = {}
    for t in turns:
        groups.setdefault(bucket_start(t.at, bucket), []).append(t)
    starts = sorted(groups)
    overall: dict[str, dict[str, float | int | None]] = {}
    series: dict[str, dict[str, list[float | int | None]]] = {}
    for stage in LATENCY_SERIES:
        values = _values(turns, stage)
        overall[stage] = {"n": len(values), "p50": percentile(values, 50),
                          "p95": percentile(values, 95)}
        per = [_values(groups[s], stage) for s in starts]
        series[stage] = {"n": [len(v) for v in per], "p50": [percentile(v, 50) for v in per],
                         "p95": [percentile(v, 95) for v in per]}
    return {"bucket": bucket, "buckets": [s.isoformat() for s in starts],
            "overall": overall, "series": series}


def default_range(now: datetime, days: float) -> tuple[datetime, datetime]:
    return now - timedelta(days=days), now
