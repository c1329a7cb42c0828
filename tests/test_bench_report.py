"""The bench report on synthetic results with known answers."""

from __future__ import annotations

import json
import math
import random
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from rejoinder.bench import svg
from rejoinder.bench.report import (
    cold_start,
    pick_turn,
    render_html,
    render_table,
    summarize,
    write_report,
)


def _turn(i: int, v2v: float | None, **extra: Any) -> dict[str, Any]:
    turn: dict[str, Any] = {
        "call": i // 10, "turn": i % 10 + 1, "v2v_ms": v2v, "replied": v2v is not None,
        "cut_off": False, "barge_in_ms": None, "ideal_ms": 100.0,
        "overhead_ms": None if v2v is None else v2v - 100.0,
        # Not in canonical order on purpose, with one stage the trace does not know.
        "server": None if v2v is None else {"outcome": "completed", "stages": {
            "first_audio_sent": v2v - 5, "custom_stage": 1.0, "speech_end": 0.0,
            "stt_final": 50.0 + i / 2, "vad_end": 40.0}},
    }
    turn.update(extra)
    return turn


def _run(concurrency: int = 10) -> dict[str, Any]:
    """100 replied turns with v2v 100..199, 25 with no reply, 5 of them cut off."""
    turns = [_turn(i, 100.0 + i) for i in range(100)]
    turns += [_turn(100 + i, None, cut_off=i < 5) for i in range(25)]
    for i, b in enumerate((80.0, 90.0, 100.0, 110.0)):
        turns[i * 7]["barge_in_ms"] = b
    # A very slow turn without a server trace: counted in v2v, never picked for a waterfall.
    turns.append(_turn(200, 5000.0, server=None, overhead_ms=None))
    random.Random(1).shuffle(turns)
    return {"concurrency": concurrency,
            "calls": {"started": 13, "refused": 2, "failed": 1, "completed": 12},
            "turns": turns,
            "resources": {"samples": [{"t": 0.5, "cpu_pct": 10.0, "rss_mb": 600.0},
                                      {"t": 1.0, "cpu_pct": 150.0, "rss_mb": 612.5},
                                      {"t": 1.5, "cpu_pct": 50.0, "rss_mb": 601.0}]}}


META = {"date": "2026-11-21T15:00:00Z", "commit": "abc1234", "host": {"cpus": 2, "mem_gb": 24},
        "stack": "local", "profile": {"stt": {"ttfb_ms": 100}}, "script": "<b>small</b> & talk",
        "command": "rejoinder bench --url http://127.0.0.1:8080"}


def _results(*runs: dict[str, Any]) -> dict[str, Any]:
    return {"meta": META, "runs": list(runs)}


def test_summary_has_exact_percentiles_and_rates():
    results = _results(_run())
    s = summarize(results)["runs"][0]["summary"]
    assert "summary" not in results["runs"][0]  # the input is left alone
    assert s["v2v_ms"] == {"n": 101, "p50": 150.0, "p95": 195.0, "p99": 199.0, "max": 5000.0}
    assert s["overhead_ms"] == {"n": 100, "p50": 49.5, "p95": 94.05, "p99": 98.01, "max": 99.0}
    assert s["barge_in_ms"] == {"n": 4, "p50": 95.0, "p95": 108.5, "p99": 109.7, "max": 110.0}
    assert s["replied_pct"] == pytest.approx(100 * 101 / 126, abs=1e-3)
    assert s["cut_off_pct"] == pytest.approx(100 * 5 / 126, abs=1e-3)
    assert (s["cpu_pct_mean"], s["cpu_pct_max"], s["rss_mb_max"]) == (70.0, 150.0, 612.5)


def test_cold_start_tax_is_the_first_turn_minus_the_median_of_the_rest_per_call():
    turns = [  # call 0: first 900, later 500/600/700 -> 300; call 1: 450 vs 500 -> -50
        _turn(3, 700.0), _turn(0, 900.0), _turn(1, 500.0), _turn(2, 600.0),
        _turn(10, 450.0), _turn(11, 500.0),
        _turn(12, None),  # no reply: not a measured turn
        _turn(20, 800.0),  # a call with one measured turn has no tax
        _turn(4, 100.0, backchannel=True),  # backchannels are not turns
    ]
    s = summarize(_results({"concurrency": 1, "turns": turns}))["runs"][0]["summary"]
    assert s["cold_start_ms"] == {"n": 2, "p50": 125.0, "p95": 282.5, "p99": 296.5,
                                  "max": 300.0}
    assert "cold-start tax" in render_table(_results({"concurrency": 1, "turns": turns}))


def test_cold_start_tax_compares_the_same_words_when_the_script_repeats_them():
    turns = [  # first 900 ("a"); later "a" turns 650/700 -> 900 - 675; "b" turns ignored
        _turn(0, 900.0, say="a"), _turn(1, 300.0, say="b"), _turn(2, 700.0, say="a"),
        _turn(3, 350.0, say="b"), _turn(4, 650.0, say="a"),
        # a call whose first words never come back: the median of all its later turns
        _turn(10, 500.0, say="c"), _turn(11, 300.0, say="d"), _turn(12, 400.0, say="d"),
    ]
    s = summarize(_results({"concurrency": 1, "turns": turns}))["runs"][0]["summary"]
    assert s["cold_start_ms"]["n"] == 2
    assert sorted(cold_start(turns)) == [150.0, 225.0]


def test_v2v_100_to_199_has_the_textbook_percentiles():
    run = {"concurrency": 1, "turns": [_turn(i, 100.0 + i) for i in range(100)]}
    s = summarize(_results(run))["runs"][0]["summary"]
    assert s["v2v_ms"] == {"n": 100, "p50": 149.5, "p95": 194.05, "p99": 198.01, "max": 199.0}
    assert s["replied_pct"] == 100.0
    assert s["cpu_pct_mean"] is None and s["rss_mb_max"] is None


def test_stages_come_in_trace_order_with_unknown_ones_last():
    s = summarize(_results(_run()))["runs"][0]["summary"]
    assert list(s["stages"]) == [
        "speech_end", "vad_end", "stt_final", "first_audio_sent", "custom_stage"]
    assert s["stages"]["vad_end"] == {"n": 100, "p50": 40.0, "p95": 40.0, "p99": 40.0,
                                      "max": 40.0}
    assert s["stages"]["stt_final"] == {"n": 100, "p50": 74.75, "p95": 97.025, "p99": 99.005,
                                        "max": 99.5}
    assert s["stages"]["first_audio_sent"]["max"] == 194.0


def test_replied_falls_back_to_v2v_when_the_flag_is_missing():
    turns = [{"v2v_ms": 100.0}, {"v2v_ms": None}, {"v2v_ms": float("nan")}, {"v2v_ms": 300.0}]
    s = summarize(_results({"concurrency": 1, "turns": turns}))["runs"][0]["summary"]
    assert s["replied_pct"] == 50.0
    assert s["v2v_ms"]["n"] == 2 and s["v2v_ms"]["p50"] == 200.0


def test_waterfall_turns_are_the_median_and_p95_by_v2v_among_traced_turns():
    turns = _run()["turns"]
    median, p95 = pick_turn(turns, 50), pick_turn(turns, 95)
    # Candidates are v2v 100..199: p50 149.5 ties 149 and 150, the faster wins; p95 194.05.
    assert median is not None and (median["v2v_ms"], median["call"], median["turn"]) == (149, 4, 10)
    assert p95 is not None and (p95["v2v_ms"], p95["call"], p95["turn"]) == (194, 9, 5)
    assert pick_turn([_turn(0, None)], 50) is None
    page = render_html(_results(_run()))
    assert "median turn: call 4, turn 10" in page and "p95 turn: call 9, turn 5" in page
    # The caller's bar follows first_audio_sent (v2v - 5) with its step.
    assert "149 ms (+5)" in page and "194 ms (+5)" in page


def test_empty_runs_give_none_not_nan_and_still_render(tmp_path):
    results = _results({"concurrency": 1, "calls": {"started": 0}, "turns": []},
                       {"concurrency": 2})
    s = summarize(results)["runs"][0]["summary"]
    assert s["v2v_ms"] == {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    assert s["stages"] == {} and s["replied_pct"] is None and s["cpu_pct_max"] is None
    json.dumps(summarize(results), allow_nan=False)
    assert "No latencies were measured" in render_html(results)
    assert "no runs" in render_table({"meta": {}, "runs": []})
    assert "No runs" in render_html({})
    paths = write_report(results, tmp_path / "empty")
    assert json.loads(paths["json"].read_text())["runs"][1]["summary"]["turns"] == 0


class _Checker(HTMLParser):
    """Checks that every element is closed in order; collects tags, attributes and text."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Checker:
    p = _Checker()
    p.feed(page)
    p.close()
    assert p.stack == []
    return p


def test_html_is_well_formed_self_contained_and_escaped():
    page = render_html(_results(_run()))
    p = _parse(page)
    # One run: a box plot and two waterfalls, no line charts, and a note instead.
    assert p.tags.count("svg") == 3 and "polyline" not in p.tags
    assert {"rect", "line", "path", "text"} <= set(p.tags)
    assert "One concurrency level only" in page
    text = "".join(p.text)
    for stage in ("vad_end", "stt_final", "first_audio_sent", "custom_stage", "voice-to-voice"):
        assert stage in text
    assert not [v for k, v in p.attrs if k in ("src", "href") or (v and "//" in v)]
    assert "script" not in p.tags and "link" not in p.tags
    assert "<b>small</b>" not in page and "&lt;b&gt;small&lt;/b&gt; &amp; talk" in page
    assert "http://127.0.0.1:8080" in text  # the command, as text only


def test_sweep_draws_lines_over_concurrency_in_order():
    page = render_html(_results(_run(10), _run(1), _run(5)))
    p = _parse(page)
    assert p.tags.count("svg") == 3 + 6 + 2 and "One concurrency level only" not in page
    lines = [dict(a)["points"] for a in _polylines(page)]
    assert len(lines) == 6  # v2v p50/p95, overhead p50/p95, CPU mean/max
    for pts in lines:
        xs = [float(pt.split(",")[0]) for pt in (pts or "").split()]
        assert len(xs) == 3 and xs == sorted(xs)
    assert "concurrent calls" in page and "ms p95 target" in page


def _polylines(page: str) -> list[list[tuple[str, str | None]]]:
    found: list[list[tuple[str, str | None]]] = []

    class P(HTMLParser):
        def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "polyline":
                found.append(attrs)

    P().feed(page)
    return found


def test_table_shows_rounded_numbers_in_100_columns():
    run = {"concurrency": 4, "calls": {"started": 4, "refused": 1, "failed": 0, "completed": 3},
           "turns": [_turn(i, 100.0 + i) for i in range(100)] + [_turn(100, None)]}
    table = render_table(_results(run))
    assert max(len(line) for line in table.splitlines()) <= 100
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()
            if line.startswith("  ") and not line.startswith("   ")}
    assert rows["voice-to-voice"] == ["100", "150", "194", "198", "199"]
    assert rows["overhead"] == ["100", "50", "94", "98", "99"]
    assert rows["barge-in"] == ["0", "-", "-", "-", "-"]
    assert rows["stt_final"] == ["100", "75", "97", "99", "100"]
    assert "concurrency 4: calls 4 started, 1 refused, 0 failed, 3 completed" in table
    assert "replied 99.0%" in table and "commit: abc1234" in table


def test_write_report_writes_json_with_summaries_and_the_page(tmp_path):
    results = _results(_run())
    replied = [t for t in results["runs"][0]["turns"] if t["v2v_ms"] is not None]
    replied[0]["v2v_ms"] = math.nan  # a runner bug must not break the JSON
    paths = write_report(results, tmp_path / "out")
    assert set(paths) == {"json", "html"}
    assert paths["json"].name == "results.json" and paths["html"].name == "report.html"
    text = paths["json"].read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["meta"]["commit"] == "abc1234"
    assert data["runs"][0]["summary"]["v2v_ms"]["n"] == 100
    assert paths["html"].read_text().startswith("<!DOCTYPE html>")


def test_nice_ticks():
    assert svg.nice_ticks(0, 199) == [0, 50, 100, 150, 200]
    assert svg.nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    assert svg.nice_ticks(-40, 95, 5) == [-50, 0, 50, 100]
    assert svg.nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_box_plot_marks_a_max_beyond_the_axis_with_its_value():
    box = svg.Box("v2v", (1.0, 2.0, 3.0, 4.0, 5.0, 900.0), "#fff", "#000")
    out = svg.box_plot([box], x_max=10.0, axis_label="ms")
    assert "max 900" in out and re.search(r">10<", out)
