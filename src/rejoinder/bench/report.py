"""The reporting half of ``rejoinder bench``: summaries, a terminal table, one HTML page.

Input is the runner's results dict (``meta`` and one ``runs`` entry per
concurrency level, each with its per-turn measurements and server resource
samples). Definitions are those of design.md: voice-to-voice is measured by the
caller from its own end of speech; server stages are ms after the server-side
end of speech; overhead is voice-to-voice minus the ideal critical path.

Distributions are ``{"n", "p50", "p95", "p99", "max"}`` with linearly
interpolated percentiles (numpy's default) and None, never NaN, for an empty
set, so every summary survives ``json.dumps``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from rejoinder.bench import svg
from rejoinder.observability.trace import STAGES

Dist = dict[str, float | int | None]

TARGET_P95_MS = 500.0  # design.md: under 500 ms at p95, voice to voice
_QS = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))
_WIDTH = 100  # columns of the terminal table
_CALLER_ROWS = 4  # rows measured by the caller, before the server's stages
_ORIGIN = "speech_end"  # the stages' zero: drawn as the axis origin, not as a row
_STAGE_FILL, _STAGE_STROKE = "#b9cfe8", "#33577f"
_V2V_FILL, _V2V_STROKE = "#f6c48f", "#a65a16"


def _mapping(v: object) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _finite(values: Iterable[object]) -> list[float]:
    return [float(v) for v in values
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linearly interpolated percentile (q in 0..100); None for an empty set."""
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 3)


def distribution(values: Sequence[float]) -> Dist:
    out: Dist = {"n": len(values)}
    out.update({name: percentile(values, q) for name, q in _QS})
    out["max"] = round(max(values), 3) if values else None
    return out


def _turns(run: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in run.get("turns") or [] if isinstance(t, Mapping)]


def stages_of(turn: Mapping[str, Any]) -> dict[str, float]:
    """The turn's server stage times (ms after server end of speech); {} without a trace."""
    stages = _mapping(_mapping(turn.get("server")).get("stages"))
    return {str(k): v[0] for k, v in ((k, _finite([v])) for k, v in stages.items()) if v}


def _stage_names(turns: Sequence[Mapping[str, Any]]) -> list[str]:
    """Stages present in any turn: canonical order first, then unknown ones as first seen."""
    seen: dict[str, None] = {}
    for t in turns:
        seen.update(dict.fromkeys(stages_of(t)))
    return [s for s in STAGES if s in seen] + [s for s in seen if s not in STAGES]


def _replied(turn: Mapping[str, Any]) -> bool:
    flag = turn.get("replied")
    return flag if isinstance(flag, bool) else bool(_finite([turn.get("v2v_ms")]))


def _pct(k: int, n: int) -> float | None:
    return round(100.0 * k / n, 3) if n else None


def cold_start(turns: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per call, the cold-start tax (design.md): the first turn's voice-to-voice minus the
    median of the same call's later turns that say the same thing (the script repeats it),
    or of all its later turns when none does. Turns differ in how long their words take to
    transcribe and whether the end-of-turn model waits, so only the same words measure the
    cold start alone. Calls with fewer than two measured turns have none."""
    by_call: dict[object, list[tuple[int, float, object]]] = {}
    for t in turns:
        v2v, n = _finite([t.get("v2v_ms")]), _finite([t.get("turn")])
        if v2v and n:
            by_call.setdefault(t.get("call"), []).append((int(n[0]), v2v[0], t.get("say")))
    out = []
    for measured in by_call.values():
        (_, first, say), *later = sorted(measured, key=lambda m: m[0])
        same = [v for _, v, s in later if say and s == say]
        if later:
            out.append(round(first - float(np.median(same or [v for _, v, _ in later])), 3))
    return out


def summarize_run(run: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of one run (one concurrency level)."""
    turns = [t for t in _turns(run) if not t.get("backchannel")]
    backchannels = [t for t in _turns(run) if t.get("backchannel")]
    samples = [_mapping(s) for s in _mapping(run.get("resources")).get("samples") or []]
    cpu = _finite(s.get("cpu_pct") for s in samples)
    rss = _finite(s.get("rss_mb") for s in samples)
    return {
        "turns": len(turns),
        "v2v_ms": distribution(_finite(t.get("v2v_ms") for t in turns)),
        "overhead_ms": distribution(_finite(t.get("overhead_ms") for t in turns)),
        "barge_in_ms": distribution(_finite(t.get("barge_in_ms") for t in turns)),
        "cold_start_ms": distribution(cold_start(turns)),
        "stages": {s: distribution(_finite(stages_of(t).get(s) for t in turns))
                   for s in _stage_names(turns)},
        "replied_pct": _pct(sum(_replied(t) for t in turns), len(turns)),
        "cut_off_pct": _pct(sum(t.get("cut_off") is True for t in turns), len(turns)),
        "backchannels": len(backchannels),
        "backchannel_kept_pct": _pct(sum(t.get("kept_turn") is True for t in backchannels),
                                     len(backchannels)),
        "backchannel_gap_ms": distribution(_finite(t.get("gap_ms") for t in backchannels)),
        "cpu_pct_mean": round(sum(cpu) / len(cpu), 3) if cpu else None,
        "cpu_pct_max": max(cpu) if cpu else None,
        "rss_mb_max": max(rss) if rss else None,
    }


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``results`` with a ``summary`` added to every run."""
    out: dict[str, Any] = copy.deepcopy(dict(results))
    out["runs"] = [dict(r) for r in out.get("runs") or [] if isinstance(r, Mapping)]
    for run in out["runs"]:
        run["summary"] = summarize_run(run)
    return out


def pick_turn(turns: Sequence[Mapping[str, Any]], q: float) -> Mapping[str, Any] | None:
    """The turn at percentile ``q`` of voice-to-voice, among turns with server stages.

    The turn whose v2v is nearest the interpolated percentile; on a tie, the faster one.
    """
    cands = sorted((t for t in turns if stages_of(t) and _finite([t.get("v2v_ms")])),
                   key=lambda t: float(t["v2v_ms"]))
    p = percentile([float(t["v2v_ms"]) for t in cands], q)
    if p is None:
        return None
    return min(cands, key=lambda t: abs(float(t["v2v_ms"]) - p))


# --- terminal table ----------------------------------------------------------------------

def _ms(v: object) -> str:
    return str(math.floor(v + 0.5)) if isinstance(v, int | float) else "-"


def _pct_text(v: object) -> str:
    return f"{v:.1f}%" if isinstance(v, int | float) else "-"


def _rows(summary: Mapping[str, Any]) -> list[tuple[str, Dist]]:
    rows = [("voice-to-voice", summary["v2v_ms"]), ("overhead", summary["overhead_ms"]),
            ("barge-in", summary["barge_in_ms"]), ("cold-start tax", summary["cold_start_ms"])]
    assert len(rows) == _CALLER_ROWS
    return rows + list(summary["stages"].items())


def _backchannel_text(s: Mapping[str, Any]) -> str:
    if not s.get("backchannels"):
        return ""
    gap = s["backchannel_gap_ms"]
    return (f"; {s['backchannels']} backchannels, agent kept its turn "
            f"{_pct_text(s['backchannel_kept_pct'])}, voice gap p50 {_ms(gap['p50'])} ms "
            f"max {_ms(gap['max'])} ms")


def _run_lines(run: Mapping[str, Any]) -> list[str]:
    """Concurrency, calls, turns and resources of one run, as four short lines."""
    s = run["summary"]
    calls = _mapping(run.get("calls"))
    counts = ", ".join(f"{calls.get(k, '-')} {k}"
                       for k in ("started", "refused", "failed", "completed"))
    return [f"concurrency {run.get('concurrency', '-')}", f"calls {counts}",
            f"{s['turns']} turns, replied {_pct_text(s['replied_pct'])}, "
            f"cut off {_pct_text(s['cut_off_pct'])}" + _backchannel_text(s),
            f"CPU mean {_pct_text(s['cpu_pct_mean'])}, max {_pct_text(s['cpu_pct_max'])}; "
            f"RSS max {_ms(s['rss_mb_max'])} MB"]


def _meta_pairs(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    def text(v: object) -> str:
        if isinstance(v, Mapping):
            return ", ".join(f"{k} {text(x)}" for k, x in v.items())
        return "-" if v is None else str(v)
    keys = ("date", "commit", "stack", "script", "host", "command")
    return [(k, text(meta.get(k))) for k in keys]


def render_table(results: Mapping[str, Any]) -> str:
    """A plain-text table per run, under 100 columns."""
    summ = summarize(results)
    meta = _mapping(summ.get("meta"))
    lines = ["rejoinder bench"]
    for k, v in _meta_pairs(meta):  # key: value pairs packed into lines of 100 columns
        pair = f"{k}: {v}" if len(k) + len(v) < 96 else f"{k}: {v[:91 - len(k)]}..."
        if len(lines[-1]) + 2 + len(pair) <= _WIDTH:
            lines[-1] += "  " + pair
        else:
            lines.append(pair)
    if not summ["runs"]:
        lines.append("no runs")
    for run in summ["runs"]:
        s = run["summary"]
        head = _run_lines(run)
        lines += ["", f"{head[0]}: {head[1]}", f"  {head[2]}; {head[3]}",
                  f"  {'ms':<24}{'n':>7}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}"]
        for name, d in _rows(s):
            cells = "".join(f"{_ms(d[k]):>8}" for k in ("p50", "p95", "p99", "max"))
            lines.append(f"  {name:<24}{d['n']:>7}{cells}")
    return "\n".join(lines) + "\n"


# --- HTML page ---------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2733;
 margin:24px auto;max-width:1100px;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 6px}h3{font-size:14px;margin:16px 0 4px}
h2{font-size:17px;margin:30px 0 8px;border-bottom:1px solid #dde2e8;padding-bottom:4px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}
dt{color:#5f6b7a}dd{margin:0;font-family:ui-monospace,Menlo,monospace;word-break:break-all}
pre{margin:0;font-size:12px;white-space:pre-wrap}
.tables,.pair{display:flex;flex-wrap:wrap;gap:12px 24px;align-items:flex-start}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;font-size:13px}
.cap{font-weight:600}.cap span{display:block;font-weight:400;color:#5f6b7a;font-size:13px}
th,td{padding:2px 7px;text-align:right;border-bottom:1px solid #edf0f3}
th:first-child,td:first-child{text-align:left}th{color:#5f6b7a;font-weight:500}
tr.main td{font-weight:600}tr.group td{color:#5f6b7a;font-size:12px;padding-top:8px}
td.over{color:#c0392b}.note{color:#5f6b7a;font-size:13px;margin:4px 0}
svg.chart{max-width:100%;height:auto;display:block}
svg text{font:12px system-ui,sans-serif;fill:#1d2733}svg text.small{font-size:11px}
svg text.muted{fill:#5f6b7a}svg text.title{font-weight:600;font-size:13px}
"""


def _html_table(run: Mapping[str, Any]) -> str:
    s = run["summary"]
    head = "".join(f"<th>{h}</th>" for h in ("ms", "n", "p50", "p95", "p99", "max"))
    rows = []
    for i, (name, d) in enumerate(_rows(s)):
        if i == _CALLER_ROWS and s["stages"]:
            rows.append('<tr class="group"><td colspan="6">server stages, ms after server '
                        "end of speech</td></tr>")
        cells = []
        for k in ("p50", "p95", "p99", "max"):
            over = i == 0 and k == "p95" and (d[k] or 0) > TARGET_P95_MS
            attr = ' class="over"' if over else ""
            cells.append(f"<td{attr}>{_ms(d[k])}</td>")
        cls = ' class="main"' if i == 0 else ""
        rows.append(f"<tr{cls}><td>{escape(name)}</td><td>{d['n']}</td>{''.join(cells)}</tr>")
    title, *facts = (escape(x) for x in _run_lines(run))
    spans = "".join(f"<span>{x}</span>" for x in facts)
    return (f'<div><div class="cap">{title}{spans}</div>'
            f"<table><tr>{head}</tr>{''.join(rows)}</table></div>")


def _box_stats(values: Sequence[float]) -> tuple[float, float, float, float, float, float] | None:
    if not values:
        return None
    p5, p25, p50, p75, p95 = (float(x) for x in np.percentile(values, [5, 25, 50, 75, 95]))
    return p5, p25, p50, p75, p95, max(values)


def _boxes(run: Mapping[str, Any]) -> list[svg.Box]:
    turns = _turns(run)
    rows = [svg.Box(s, _box_stats(_finite(stages_of(t).get(s) for t in turns)),
                    _STAGE_FILL, _STAGE_STROKE)
            for s in run["summary"]["stages"] if s != _ORIGIN]
    v2v = _box_stats(_finite(t.get("v2v_ms") for t in turns))
    return [*rows, svg.Box("voice-to-voice", v2v, _V2V_FILL, _V2V_STROKE)]


def _distributions(runs: Sequence[Mapping[str, Any]]) -> str:
    per_run = [_boxes(r) for r in runs]
    stats = [b.stats for rows in per_run for b in rows if b.stats is not None]
    if not stats:
        return '<p class="note">No latencies were measured.</p>'
    p95_hi, max_hi = max(s[4] for s in stats), max(s[5] for s in stats)
    x_max = max(min(max_hi, 1.5 * p95_hi), TARGET_P95_MS * 1.05)  # far outliers get an arrow
    out = ['<p class="note">Server stages in ms after the server-side end of speech; '
           "voice-to-voice in ms after the caller's own end of speech, as the caller heard it."
           + (" All runs share one axis." if len(runs) > 1 else "") + "</p>"]
    for run, rows in zip(runs, per_run, strict=True):
        if len(runs) > 1:
            out.append(f"<h3>concurrency {escape(str(run.get('concurrency')))}</h3>")
        out.append(svg.box_plot(rows, x_max=x_max, target=TARGET_P95_MS,
                                axis_label="ms after end of speech"))
    return "".join(out)


def _bars(turn: Mapping[str, Any]) -> list[svg.Bar]:
    bars, prev = [], 0.0
    stages = stages_of(turn)
    order = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES]
    items = [(s, stages[s], _STAGE_FILL, _STAGE_STROKE) for s in order if s != _ORIGIN]
    items.append(("voice-to-voice", float(turn["v2v_ms"]), _V2V_FILL, _V2V_STROKE))
    for name, end, light, solid in items:
        step = f" (+{end - prev:.0f})" if end - prev >= 0.5 else ""
        bars.append(svg.Bar(name, end, prev, light, solid, f"{_ms(end)} ms{step}"))
        prev = max(prev, end)
    return bars


def _turn_name(turn: Mapping[str, Any]) -> str:
    return f"call {turn.get('call', '?')}, turn {turn.get('turn', '?')}"


def _waterfalls(runs: Sequence[Mapping[str, Any]]) -> str:
    picked = [[(q, pick_turn(_turns(r), q)) for q in (50.0, 95.0)] for r in runs]
    ends = [b.end for pair in picked for _, t in pair if t for b in _bars(t)]
    out = ['<p class="note">The turns at the median and at p95 of voice-to-voice, among '
           "turns with a server trace. Each bar runs from the server's end of speech to the "
           "stage; the solid part is the time since the stage before. The last bar is the "
           "caller's measurement (from the caller's end of speech), so its step includes "
           "the network and playout.</p>"]
    for run, pair in zip(runs, picked, strict=True):
        if len(runs) > 1:
            out.append(f"<h3>concurrency {escape(str(run.get('concurrency')))}</h3>")
        if not any(t for _, t in pair):
            out.append('<p class="note">No turn with both a server trace and a reply.</p>')
            continue
        charts = [svg.waterfall(_bars(t), x_max=max(ends), axis_label="ms after end of speech",
                                title=f"{'median' if q == 50 else 'p95'} turn: {_turn_name(t)}")
                  for q, t in pair if t]
        out.append(f'<div class="pair">{"".join(charts)}</div>')
    return "".join(out)


def _concurrency(runs: Sequence[Mapping[str, Any]]) -> str:
    if len(runs) < 2:
        return ('<p class="note">One concurrency level only: sweep several levels to see '
                "latency against load.</p>")
    runs = sorted(runs, key=lambda r: float(r.get("concurrency") or 0))
    xs = [float(r.get("concurrency") or 0) for r in runs]

    def col(key: str, q: str | None = None) -> tuple[float | None, ...]:
        vals = [r["summary"][key] if q is None else r["summary"][key][q] for r in runs]
        return tuple(float(v) if isinstance(v, int | float) else None for v in vals)

    latency = svg.line_chart(xs, [
        svg.Series("voice-to-voice p50", col("v2v_ms", "p50"), _V2V_STROKE),
        svg.Series("voice-to-voice p95", col("v2v_ms", "p95"), _V2V_STROKE, dashed=True),
        svg.Series("overhead p50", col("overhead_ms", "p50"), "#6a51a3"),
        svg.Series("overhead p95", col("overhead_ms", "p95"), "#6a51a3", dashed=True),
    ], title="Voice-to-voice and overhead", x_label="concurrent calls", y_label="ms",
        target=TARGET_P95_MS)
    cpu = svg.line_chart(xs, [
        svg.Series("CPU mean", col("cpu_pct_mean"), "#59a14f"),
        svg.Series("CPU max", col("cpu_pct_max"), "#59a14f", dashed=True),
    ], title="Server CPU against concurrency", x_label="concurrent calls",
        y_label="% of one core")
    return f'<div class="pair">{latency}{cpu}</div>'


def _header(meta: Mapping[str, Any]) -> str:
    pairs = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in _meta_pairs(meta))
    profile = meta.get("profile")
    prof = (escape(json.dumps(profile, sort_keys=True, default=str))
            if profile is not None else "none (overhead needs the fake providers' profile)")
    title = f"rejoinder bench: {meta.get('script') or 'results'}"
    return (f"<header><h1>{escape(title)}</h1><dl class=\"meta\">{pairs}<dt>profile</dt>"
            f"<dd><pre>{prof}</pre></dd></dl></header>")


def _page(summ: Mapping[str, Any], sections: Sequence[tuple[str, str]] = ()) -> str:
    """The page; ``sections``: (title, HTML) of more sections, after the summary's."""
    meta = _mapping(summ.get("meta"))
    runs = summ["runs"]
    if runs:
        body = ('<div class="tables">' + "".join(_html_table(r) for r in runs) + "</div>"
                + "<h2>Latency distributions</h2>" + _distributions(runs)
                + "<h2>Median and p95 turn</h2>" + _waterfalls(runs)
                + "<h2>Latency against concurrency</h2>" + _concurrency(runs))
    else:
        body = '<p class="note">No runs.</p>'
    body += "".join(f"<h2>{escape(name)}</h2>{html}" for name, html in sections)
    title = escape(f"rejoinder bench: {meta.get('script') or 'results'}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}'
            f"</title><style>{_CSS}</style></head><body>{_header(meta)}<h2>Summary</h2>"
            f"{body}</body></html>\n")


def render_html(results: Mapping[str, Any]) -> str:
    """One self-contained HTML page: inline CSS and SVG, no scripts, no external URLs."""
    return _page(summarize(results))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def write_report(results: Mapping[str, Any], out_dir: str | Path,
                 sections: Sequence[tuple[str, str]] = ()) -> dict[str, Path]:
    """Write ``results.json`` (with summaries) and ``report.html`` (with ``sections``, as
    (title, HTML), after its own); return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summ = summarize(results)
    paths = {"json": out / "results.json", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(_json_safe(summ), indent=1, allow_nan=False) + "\n",
                             encoding="utf-8")
    paths["html"].write_text(_page(summ, sections), encoding="utf-8")
    return paths
