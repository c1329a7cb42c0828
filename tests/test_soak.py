"""The soak (``rejoinder bench --soak-minutes``): its arithmetic, its /proc readings, and a
short soak of a real server."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from rejoinder.bench.soak import SoakOptions, resources, tree
from rejoinder.bench.soak_report import edges, growth, render_table, slope, windows


def test_slope_of_a_line_is_exact_and_noise_gives_it_an_error():
    assert slope([0, 1, 2, 3], [5, 7, 9, 11]) == (pytest.approx(2.0), pytest.approx(0.0))
    b, se = slope([0, 1, 2, 3, 4, 5], [0, 1, 0, 1, 0, 1]) or (0.0, 0.0)
    assert b == pytest.approx(3 / 35)  # least squares by hand: sum(dt*dy) / sum(dt^2)
    assert se > b / 2
    assert slope([0, 1], [0, 1]) is None  # two points: no error to give
    assert slope([3, 3, 3], [1, 2, 3]) is None  # no spread in time
    with pytest.raises(ValueError, match="length"):
        slope([0, 1, 2], [0, 1])


def _series(values, every_s=10.0):
    return [{"t": i * every_s, "v": v} for i, v in enumerate(values)]


def test_growth_after_a_warm_up_is_flat_and_a_leak_grows():
    rng = np.random.default_rng(0)
    # 30 minutes every 10 s: a warm-up of 5 minutes from 200 to 300 MB, then noise around 300.
    warm = [200 + 100 * min(i / 30, 1) + rng.normal(0, 2) for i in range(181)]
    g = growth(_series(warm), "v", 0.0, 1800.0)
    assert g["start"] == pytest.approx(warm[0]) and g["end"] == pytest.approx(warm[180])
    assert g["middle"] == pytest.approx(warm[90])
    assert g["first_half"]["per_min"] > 3.0  # the warm-up, in MB a minute
    assert g["second_half"]["n"] == 91
    assert g["verdict"] == "flat"
    # Half a MB a minute under the same noise: a leak of 30 MB an hour.
    leak = [300 + 0.5 * i / 6 + rng.normal(0, 2) for i in range(181)]
    g = growth(_series(leak), "v", 0.0, 1800.0)
    assert g["second_half"]["per_min"] == pytest.approx(0.5, abs=0.15)
    assert g["verdict"] == "grows"
    assert growth(_series([1.0, 2.0]), "v", 0.0, 10.0)["verdict"] == "too few samples"


def test_windows_count_turns_by_their_end_of_speech_and_calls_by_their_ends():
    turns = [
        {"at_s": 5.0, "v2v_ms": 600.0, "overhead_ms": 30.0},
        {"at_s": 15.0, "v2v_ms": 700.0, "overhead_ms": 40.0},
        {"at_s": 16.0, "v2v_ms": 800.0, "overhead_ms": 50.0},
        {"at_s": 17.0, "v2v_ms": None, "overhead_ms": None},   # no reply
        {"at_s": 18.0, "backchannel": True, "v2v_ms": None},    # not a turn to answer
        {"at_s": 31.0, "v2v_ms": 900.0, "overhead_ms": 60.0},   # after the end: the last
    ]
    calls = [{"start_s": 0.0, "end_s": 12.0, "outcome": "completed"},
             {"start_s": 12.0, "end_s": 13.0, "outcome": "failed"},
             {"start_s": 14.0, "end_s": 33.0, "outcome": "completed"},
             {"start_s": 19.0}]  # still going: started, not ended
    w1, w2 = windows(turns, calls, 10.0, 20.0)
    assert (w1["start_s"], w1["end_s"], w2["start_s"], w2["end_s"]) == (0, 10, 10, 20)
    assert (w1["turns"], w1["v2v_p50"], w1["overhead_p95"]) == (1, 600.0, 30.0)
    assert (w2["turns"], w2["no_reply"]) == (4, 1)
    assert w2["v2v_p50"] == pytest.approx(800.0) and w2["v2v_p95"] == pytest.approx(890.0)
    assert (w1["started"], w1["completed"], w1["failed"]) == (1, 0, 0)
    assert (w2["started"], w2["completed"], w2["failed"]) == (3, 2, 1)
    with pytest.raises(ValueError):
        windows(turns, calls, 0.0, 20.0)


def test_edges_compare_the_first_and_last_spans():
    turns = [{"at_s": float(t), "v2v_ms": 600.0 + t, "overhead_ms": float(t)}
             for t in range(0, 600, 10)]
    e = edges(turns, 60.0, 600.0)
    assert e["first"]["turns"] == e["last"]["turns"] == 6
    assert e["first"]["v2v_p50"] == pytest.approx(625.0)
    assert e["last"]["v2v_p50"] == pytest.approx(1165.0)
    assert e["last"]["overhead_p95"] == pytest.approx(587.5)


def test_soak_options_are_checked():
    with pytest.raises(ValueError, match="calls"):
        SoakOptions(calls=0, minutes=1)
    with pytest.raises(ValueError, match="positive"):
        SoakOptions(calls=2, minutes=0)
    with pytest.raises(ValueError, match="negative"):
        SoakOptions(calls=2, minutes=1, settle_s=-1)


def test_the_process_tree_and_its_resources_from_proc():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        mine = tree(os.getpid())
        assert mine[0] == os.getpid() and child.pid in mine
        before = resources([os.getpid()])
        with open(os.devnull) as f:
            opened = resources([os.getpid()])
            assert f.fileno() >= 0
        assert opened["fds"] == before["fds"] + 1
        assert before["rss_mb"] > 10 and before["threads"] >= 1 and before["procs"] == 1
        both = resources(mine)
        assert both["procs"] >= 2 and both["rss_mb"] > before["rss_mb"]
    finally:
        child.kill()
        child.wait()
    assert tree(child.pid) == []
    assert resources([child.pid])["procs"] == 0


@pytest.mark.slow
def test_a_short_soak_keeps_its_calls_going_and_samples_the_server(tmp_path):
    """Two calls of one turn for 20 s against the simulated cloud: about 30 s."""
    from rejoinder.bench.runner import BenchOptions
    from rejoinder.bench.scripts import load_script
    from rejoinder.bench.soak import run_soak, write_soak

    script = tmp_path / "one.toml"
    script.write_text('name = "one"\nlead_s = 0.5\n[[turn]]\nsay = "pocketsphinx:goforward"\n')
    opts = BenchOptions(script=load_script(str(script)), stack="cloud", out=tmp_path / "out")
    soak_opts = SoakOptions(calls=2, minutes=20 / 60, sample_s=2.0, window_s=10.0,
                            edge_s=10.0, settle_s=2.0)
    results = run_soak(opts, soak_opts, progress=lambda line: None)
    soak = results["soak"]
    counts = soak["calls_count"]
    assert counts["failed"] == counts["refused"] == 0, results["runs"][0]["errors"]
    assert counts["completed"] == counts["started"] >= 4
    # Each lane starts its next call as its last one ends: the concurrency stays at 2.
    assert soak["concurrency"] == {"min": 2, "max": 2}
    for lane in (0, 1):
        mine = [c for c in soak["calls"] if c["lane"] == lane]
        assert len(mine) >= 2
        assert all(b["start_s"] - a["end_s"] < 0.1 for a, b in zip(mine, mine[1:], strict=False))
    samples = soak["samples"]
    assert len(samples) >= 10
    assert all(s["rss_mb"] > 50 and s["fds"] > 0 and s["threads"] > 0 for s in samples)
    assert max(s["live_calls"] for s in samples) == 2
    assert soak["after"]["live_calls"] == 0  # no call slot held after the calls ended
    turns = results["runs"][0]["turns"]
    assert len(turns) == counts["completed"] and all(t["replied"] for t in turns)
    assert sum(w["turns"] for w in soak["windows"]) == len(turns)
    assert set(soak["growth"]) == {"rss_mb", "fds", "threads"}
    assert soak["edges"]["first"]["turns"] > 0 and soak["edges"]["last"]["turns"] > 0
    paths = write_soak(results, tmp_path / "out")
    table = paths["table"].read_text()
    assert "RSS" in table and "open FDs" in table and "0:10-0:20" in table
    assert render_table(soak) == table
    assert "Server RSS" in paths["html"].read_text()


@pytest.mark.slow
def test_a_soak_in_debug_mode_writes_the_allocation_growth(tmp_path):
    """One call of one turn for 6 s, the server tracing its allocations."""
    from rejoinder.bench.runner import BenchOptions
    from rejoinder.bench.scripts import load_script
    from rejoinder.bench.soak import run_soak

    script = tmp_path / "one.toml"
    script.write_text('name = "one"\nlead_s = 0.5\n[[turn]]\nsay = "pocketsphinx:goforward"\n')
    opts = BenchOptions(script=load_script(str(script)), stack="cloud", out=tmp_path / "out")
    results = run_soak(opts, SoakOptions(calls=1, minutes=0.1, sample_s=2.0, window_s=6.0,
                                         edge_s=6.0, settle_s=1.0, tracemalloc=True),
                       progress=lambda line: None)
    assert results["soak"]["calls_count"]["failed"] == 0
    snaps = sorted((tmp_path / "out" / "tracemalloc").glob("snapshot-*.tracemalloc"))
    assert [p.name for p in snaps] == [f"snapshot-{n}.tracemalloc" for n in (1, 2, 3, 4)]
    text = (tmp_path / "out" / "tracemalloc.txt").read_text()
    assert text.startswith("Allocations that changed most from the middle")
    assert text.count("traced in all:") == 2 and "/rejoinder/" in text
