"""The arithmetic and the report of a soak (``rejoinder bench --soak-minutes``).

Pure functions of the soak's records (:mod:`rejoinder.bench.soak` collects them):

- **windows**: per window of the run (a minute by default), the turns that ended in it
  (their caller's end of speech), their voice-to-voice and overhead p50 / p95, and the
  calls started, completed and failed in it.
- **growth** of a sampled quantity (RSS, open file descriptors, threads): its value at
  the start, the middle and the end, and its least-squares slope per minute over the
  first half and over the second half, each with its standard error. The first half
  holds the warm-up (pools filling, lazy imports, caches), so a leak shows as a second
  half that still rises. The verdict is a printed judgement, not an assertion: "grows"
  when the second half's slope is more than two standard errors above zero, "flat"
  otherwise; the slope per hour is printed beside it, so a small but real rise is seen
  for what it is.
- **edges**: voice-to-voice and overhead p50 / p95 of the first and of the last few
  minutes, for the latency's drift.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

from rejoinder.bench import svg
from rejoinder.bench.report import percentile

GROWTH_KEYS = (("rss_mb", "RSS", "MB"), ("fds", "open FDs", ""), ("threads", "threads", ""))


def slope(ts: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """The least-squares slope of ys over ts and its standard error; None with fewer than
    three points or no spread in ts. The error is that of ordinary least squares (the
    residuals' variance over the spread of ts): it assumes independent noise, which
    samples seconds apart are not quite, so read it as a floor."""
    t = np.asarray(ts, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if t.size != y.size:
        raise ValueError("ts and ys differ in length")
    if t.size < 3:
        return None
    sxx = float(np.sum((t - t.mean()) ** 2))
    if sxx <= 0.0:
        return None
    b = float(np.sum((t - t.mean()) * (y - y.mean())) / sxx)
    resid = y - (y.mean() + b * (t - t.mean()))
    se = math.sqrt(float(np.sum(resid**2)) / (t.size - 2) / sxx)
    return b, se


def _at(samples: Sequence[Mapping[str, Any]], key: str, t: float) -> float | None:
    """The value of the sample nearest time t (s)."""
    have = [s for s in samples if isinstance(s.get(key), int | float)]
    if not have:
        return None
    return float(min(have, key=lambda s: abs(float(s["t"]) - t))[key])


def growth(samples: Sequence[Mapping[str, Any]], key: str, start_s: float,
           end_s: float) -> dict[str, Any]:
    """Start, middle and end values of ``key`` and its slope per minute in each half of
    [start_s, end_s] (samples are dicts with ``t`` in seconds); see the module docstring."""
    mid = (start_s + end_s) / 2.0
    out: dict[str, Any] = {"start": _at(samples, key, start_s), "middle": _at(samples, key, mid),
                           "end": _at(samples, key, end_s)}
    for half, lo, hi in (("first_half", start_s, mid), ("second_half", mid, end_s)):
        pts = [(float(s["t"]), float(s[key])) for s in samples
               if isinstance(s.get(key), int | float) and lo <= float(s["t"]) <= hi]
        fit = slope([p[0] / 60.0 for p in pts], [p[1] for p in pts])
        out[half] = (None if fit is None else
                     {"per_min": round(fit[0], 4), "se": round(fit[1], 4), "n": len(pts)})
    second = out["second_half"]
    if second is None:
        out["verdict"] = "too few samples"
    else:
        rising = second["per_min"] > 2.0 * second["se"] and second["per_min"] > 0.0
        out["verdict"] = "grows" if rising else "flat"
    return out


def windows(turns: Sequence[Mapping[str, Any]], calls: Sequence[Mapping[str, Any]],
            window_s: float, end_s: float) -> list[dict[str, Any]]:
    """Per window of ``window_s`` from 0 to ``end_s``: turns (by ``at_s``, their end of
    speech) and their v2v / overhead p50 and p95; calls started (``start_s``) and
    completed or failed (``end_s``, ``outcome``) in it. A call or turn after ``end_s``
    (the last calls finish after the soak's end) counts in the last window."""
    if window_s <= 0:
        raise ValueError("window_s must be positive")
    n = max(1, math.ceil(end_s / window_s - 1e-9))

    def index(t: object) -> int | None:
        if not isinstance(t, int | float):
            return None
        return min(n - 1, max(0, int(float(t) // window_s)))

    rows: list[dict[str, Any]] = [
        {"start_s": round(i * window_s, 3), "end_s": round(min((i + 1) * window_s, end_s), 3),
         "v2v": [], "overhead": [], "turns": 0, "no_reply": 0,
         "started": 0, "completed": 0, "failed": 0, "refused": 0} for i in range(n)]
    for t in turns:
        i = index(t.get("at_s"))
        if i is None or t.get("backchannel"):
            continue
        rows[i]["turns"] += 1
        if isinstance(t.get("v2v_ms"), int | float):
            rows[i]["v2v"].append(float(t["v2v_ms"]))
        else:
            rows[i]["no_reply"] += 1
        if isinstance(t.get("overhead_ms"), int | float):
            rows[i]["overhead"].append(float(t["overhead_ms"]))
    for c in calls:
        i = index(c.get("start_s"))
        if i is not None:
            rows[i]["started"] += 1
        j = index(c.get("end_s"))
        if j is not None and c.get("outcome") in ("completed", "failed", "refused"):
            rows[j][str(c["outcome"])] += 1
    for row in rows:
        v2v, over = row.pop("v2v"), row.pop("overhead")
        row["v2v_p50"], row["v2v_p95"] = percentile(v2v, 50), percentile(v2v, 95)
        row["overhead_p50"], row["overhead_p95"] = percentile(over, 50), percentile(over, 95)
    return rows


def edges(turns: Sequence[Mapping[str, Any]], span_s: float, end_s: float) -> dict[str, Any]:
    """v2v and overhead p50 / p95 of the turns in the first and in the last ``span_s``."""
    out: dict[str, Any] = {"span_s": span_s}
    for name, lo, hi in (("first", 0.0, span_s), ("last", end_s - span_s, math.inf)):
        sel = [t for t in turns if not t.get("backchannel")
               and isinstance(t.get("at_s"), int | float) and lo <= float(t["at_s"]) < hi]
        v2v = [float(t["v2v_ms"]) for t in sel if isinstance(t.get("v2v_ms"), int | float)]
        over = [float(t["overhead_ms"]) for t in sel
                if isinstance(t.get("overhead_ms"), int | float)]
        out[name] = {"turns": len(sel), "v2v_p50": percentile(v2v, 50),
                     "v2v_p95": percentile(v2v, 95), "overhead_p50": percentile(over, 50),
                     "overhead_p95": percentile(over, 95)}
    return out


# --- text and HTML -----------------------------------------------------------------------

def _n(v: object, digits: int = 0) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "-"


def _clock(seconds: float) -> str:
    """Minutes and seconds: 90 -> "1:30"."""
    m, sec = divmod(round(seconds), 60)
    return f"{m}:{sec:02d}"


def _growth_line(name: str, unit: str, g: Mapping[str, Any]) -> str:
    u = f" {unit}" if unit else ""
    digits = 1 if unit else 0
    halves = []
    for half in ("first_half", "second_half"):
        h = g.get(half)
        halves.append("-" if not h else f"{h['per_min']:+.3f} ± {h['se']:.3f}{u}/min")
    second = g.get("second_half")
    hourly = "" if not second else f" ({60 * second['per_min']:+.1f}{u}/h)"
    return (f"  {name:<9} start {_n(g.get('start'), digits)}, middle "
            f"{_n(g.get('middle'), digits)}, end {_n(g.get('end'), digits)}{u}; slope first half"
            f" {halves[0]}, second half {halves[1]}{hourly}: {g.get('verdict')}")


def render_table(soak: Mapping[str, Any]) -> str:
    """The soak as plain text: the set-up, the growth lines, the latency's edges, then one
    line per window."""
    cfg = soak["config"]
    counts = soak["calls_count"]
    lines = [f"soak: {cfg['calls']} calls for {cfg['minutes']:g} min, script {cfg['script']!r};"
             f" sampled every {cfg['sample_s']:g} s",
             f"  load before: {soak['load']['before']}; after: {soak['load']['after']}",
             f"  calls: {counts['started']} started, {counts['completed']} completed, "
             f"{counts['failed']} failed, {counts['refused']} refused; concurrency held "
             f"{soak['concurrency']['min']}-{soak['concurrency']['max']} in the samples",
             f"  live calls on the server after the soak: {soak['after']['live_calls']}"
             f" ({soak['after']['settle_s']:g} s after the last call ended)",
             "growth of the server's process tree (slope ± its standard error):"]
    lines += [_growth_line(name, unit, soak["growth"][key]) for key, name, unit in GROWTH_KEYS]
    e = soak["edges"]
    for name in ("first", "last"):
        x = e[name]
        lines.append(f"  {name} {e['span_s'] / 60:g} min: {x['turns']} turns, v2v p50 "
                     f"{_n(x['v2v_p50'])} / p95 {_n(x['v2v_p95'])} ms, overhead p50 "
                     f"{_n(x['overhead_p50'])} / p95 {_n(x['overhead_p95'])} ms")
    lines += ["", f"  {'window':<12}{'turns':>6}{'v2v p50':>9}{'p95':>6}{'over p50':>10}"
                  f"{'p95':>6}{'start':>7}{'done':>6}{'fail':>6}{'RSS MB':>8}{'FDs':>6}"
                  f"{'thr':>5}{'load':>6}"]
    samples = soak["samples"]
    for w in soak["windows"]:
        inside = [s for s in samples if w["start_s"] <= s["t"] <= w["end_s"]]
        last = inside[-1] if inside else {}
        span = f"{_clock(w['start_s'])}-{_clock(w['end_s'])}"
        lines.append(f"  {span:<12}{w['turns']:>6}{_n(w['v2v_p50']):>9}{_n(w['v2v_p95']):>6}"
                     f"{_n(w['overhead_p50']):>10}{_n(w['overhead_p95']):>6}{w['started']:>7}"
                     f"{w['completed']:>6}{w['failed'] + w['refused']:>6}"
                     f"{_n(last.get('rss_mb'), 1):>8}{_n(last.get('fds')):>6}"
                     f"{_n(last.get('threads')):>5}{_n(last.get('load1'), 1):>6}")
    return "\n".join(lines) + "\n"


def _minute_ticks(end_min: float) -> list[float]:
    return svg.nice_ticks(0.0, max(end_min, 1.0), 6)


def render_html(soak: Mapping[str, Any]) -> str:
    """The soak's section of report.html: the growth lines, resources and latency over
    time."""
    samples = soak["samples"]
    xs = [float(s["t"]) / 60.0 for s in samples]
    ticks = _minute_ticks(max(xs, default=1.0))

    def ys(key: str) -> tuple[float | None, ...]:
        return tuple(float(s[key]) if isinstance(s.get(key), int | float) else None
                     for s in samples)

    def chart(title: str, y_label: str, series: list[svg.Series]) -> str:
        return svg.line_chart(xs, series, title=title, x_label="minutes", y_label=y_label,
                              x_ticks=ticks, markers=False)

    wins = soak["windows"]
    wx = [(w["start_s"] + w["end_s"]) / 120.0 for w in wins]

    def wy(key: str) -> tuple[float | None, ...]:
        return tuple(float(w[key]) if isinstance(w.get(key), int | float) else None
                     for w in wins)

    latency = svg.line_chart(wx, [
        svg.Series("v2v p50", wy("v2v_p50"), "#a65a16"),
        svg.Series("v2v p95", wy("v2v_p95"), "#a65a16", dashed=True),
        svg.Series("overhead p50", wy("overhead_p50"), "#6a51a3"),
        svg.Series("overhead p95", wy("overhead_p95"), "#6a51a3", dashed=True),
    ], title="Latency per window", x_label="minutes", y_label="ms",
        x_ticks=_minute_ticks(max(wx, default=1.0)))
    charts = [
        chart("Server RSS (process tree)", "MB", [svg.Series("RSS", ys("rss_mb"), "#33577f")]),
        chart("Open file descriptors and threads", "count",
              [svg.Series("FDs", ys("fds"), "#59a14f"),
               svg.Series("threads", ys("threads"), "#e15759", dashed=True)]),
        chart("Live calls", "calls", [svg.Series("on the server", ys("live_calls"), "#33577f"),
                                      svg.Series("placed by the bench", ys("in_flight"),
                                                 "#a65a16", dashed=True)]),
        latency,
    ]
    text = render_table(soak)
    return (f"<pre>{escape(text)}</pre>"
            f'<div class="pair">{"".join(charts)}</div>')


__all__ = ["edges", "growth", "render_html", "render_table", "slope", "windows"]
