"""``rejoinder bench --soak-minutes M --calls N``: N calls kept going for M minutes.

Each of N lanes places a call (the bench's script, by the bench's caller), and the next
as soon as one ends, so N calls stay in flight until the time is up; the calls in flight
then finish. A refused or failed call is followed by a second's pause before the lane's
next, so a broken server is not hammered. Every ``sample_s`` the server's process tree
(the server and its children: workers, nats-server) is read from ``/proc`` (Linux):
resident memory, open file descriptors, threads and CPU, with the server's own count of
live calls (``/api/health``) and the machine's load. After the last call the soak waits
``settle_s`` and samples once more: a call slot still held then is a leak.

With ``tracemalloc`` (a debug mode: tracing slows the server) the server it starts traces
its allocations (:mod:`rejoinder.observability.memdebug`); snapshots are taken before the
first call, in the middle, at the end and after the last call, and ``tracemalloc.txt``
gives the source lines that grew from the middle to the end (a leak under load) and from
before the calls to after them (what the calls left behind).

The windows, the growth slopes and the table are :mod:`rejoinder.bench.soak_report`'s.
Results: ``results.json`` (the bench's, with a ``soak`` part), ``soak.txt`` and
``report.html`` in ``--out``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from rejoinder.bench import soak_report
from rejoinder.bench.runner import BenchOptions, Started, meta_of, place_call, started
from rejoinder.client.measure import percentile


@dataclass(frozen=True)
class SoakOptions:
    calls: int                     # concurrent calls kept in flight
    minutes: float                 # how long new calls are started
    sample_s: float = 10.0         # between samples of the server's resources
    window_s: float = 60.0         # the latency and call counts per window of this length
    edge_s: float = 300.0          # first and last span compared for the latency's drift
    settle_s: float = 10.0         # after the last call, before the last sample
    failure_pause_s: float = 1.0   # a lane's pause after a refused or failed call
    tracemalloc: bool = False      # debug: allocation snapshots of the server it starts

    def __post_init__(self) -> None:
        if not 1 <= self.calls <= 100:
            raise ValueError("calls must be between 1 and 100")
        if self.minutes <= 0 or self.sample_s <= 0 or self.window_s <= 0 or self.edge_s <= 0:
            raise ValueError("minutes, sample_s, window_s and edge_s must be positive")
        if self.settle_s < 0 or self.failure_pause_s < 0:
            raise ValueError("settle_s and failure_pause_s cannot be negative")


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc``; [] when ``pid`` is gone."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    if not Path(f"/proc/{pid}").exists():
        return []
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def resources(pids: list[int]) -> dict[str, float]:
    """Summed over ``pids`` (from ``/proc/PID/stat`` and ``/proc/PID/fd``): RSS (MB; pages
    shared between them count once per process), open file descriptors, threads and CPU
    ticks (user + system). A process that ends meanwhile is left out."""
    page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
    rss_kb = fds = threads = ticks = n = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            n_fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, IndexError):
            continue
        # Fields after the name, from state (field 3 of proc(5)): utime 14, stime 15,
        # num_threads 20, rss 24 (pages).
        ticks += int(fields[11]) + int(fields[12])
        threads += int(fields[17])
        rss_kb += int(fields[21]) * page_kb
        fds += n_fds
        n += 1
    return {"rss_mb": round(rss_kb / 1024.0, 1), "fds": fds, "threads": threads,
            "ticks": ticks, "procs": n}


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    return resources([pid])["rss_mb"] or None


class _Soak:
    def __init__(self, up: Started, opts: BenchOptions, soak: SoakOptions,
                 progress: Callable[[str], None]) -> None:
        self.up, self.opts, self.soak, self.progress = up, opts, soak, progress
        self.t0 = 0.0
        self.in_flight = 0
        self.calls: list[dict[str, Any]] = []
        self.turns: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self._ticks: tuple[float, int] | None = None
        self.snapshots: list[Path] = []
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="soak-proc")

    def now(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    async def run(self) -> dict[str, Any]:
        self.t0 = asyncio.get_running_loop().time()
        try:
            return await self._run(self.soak.minutes * 60.0)
        finally:
            self._reader.shutdown(wait=False)

    async def _run(self, end_s: float) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            await self.sample(http)
            if self.soak.tracemalloc:  # before the calls, and in the middle and at the end
                await self._snapshot()
            sampling = asyncio.create_task(self._sampling(http))
            lanes = [self._lane(k, end_s) for k in range(self.soak.calls)]
            if self.soak.tracemalloc:
                lanes.append(self._snapshots((end_s / 2, end_s)))
            try:
                await asyncio.gather(*lanes)
            finally:
                sampling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampling
            last_end = self.now()
            await asyncio.sleep(self.soak.settle_s)
            after = await self.sample(http)
            if self.soak.tracemalloc:  # and once the calls have ended
                await self._snapshot()
        return self._result(end_s, last_end, after)

    async def _snapshots(self, at: tuple[float, ...]) -> None:
        for t in at:
            await asyncio.sleep(max(0.0, t - self.now()))
            await self._snapshot()

    async def _snapshot(self, timeout_s: float = 120.0) -> None:
        """Ask the server for an allocation snapshot (SIGUSR1, memdebug) and wait until its
        file is written (its size unchanged over half a second)."""
        from rejoinder.observability.memdebug import ENV

        pid = self.up.pids.get("server")
        folder = dict(self.up.opts.script.server).get(ENV)
        if pid is None or folder is None:
            return
        path = Path(folder) / f"snapshot-{len(self.snapshots) + 1}.tracemalloc"
        os.kill(pid, signal.SIGUSR1)
        size = -1
        async with asyncio.timeout(timeout_s):
            while not path.exists() or path.stat().st_size != size:
                size = path.stat().st_size if path.exists() else -1
                await asyncio.sleep(0.5)
        self.snapshots.append(path)
        self.progress(f"  allocation snapshot {path.name} at {self.now() / 60:.1f} min")

    async def _lane(self, k: int, end_s: float) -> None:
        await asyncio.sleep(k * self.opts.ramp_s)
        while self.now() < end_s:
            n = len(self.calls)
            call: dict[str, Any] = {"call": n, "lane": k, "start_s": round(self.now(), 3)}
            self.calls.append(call)
            self.in_flight += 1
            try:
                placed = await place_call(self.up.url, self.up.opts, n, self.up.ideal)
            finally:
                self.in_flight -= 1
            call.update(end_s=round(self.now(), 3), outcome=placed.outcome)
            self.errors.extend(placed.errors)
            if placed.record is not None:
                for row, spoken in zip(placed.turns, placed.record.turns, strict=True):
                    row["at_s"] = round(spoken.eos - self.t0, 3)
                    self.turns.append(row)
            else:
                await asyncio.sleep(self.soak.failure_pause_s)

    async def _sampling(self, http: aiohttp.ClientSession) -> None:
        next_report = self.soak.window_s
        while True:
            await asyncio.sleep(self.soak.sample_s)
            s = await self.sample(http)
            if s["t"] >= next_report - 1e-6:
                self._report(next_report - self.soak.window_s, s)
                while next_report <= s["t"] + 1e-6:  # a late sample closes every window past
                    next_report += self.soak.window_s

    async def sample(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        pid = self.up.pids.get("server")
        t = self.now()
        s: dict[str, Any] = {"t": round(t, 2), "in_flight": self.in_flight,
                             "load1": round(os.getloadavg()[0], 2)}
        if pid is not None:
            # Its own thread: the default pool may be queued up with the callers' work.
            used = await asyncio.get_running_loop().run_in_executor(
                self._reader, lambda: resources(tree(pid)))
            ticks = int(used.pop("ticks"))
            s.update(used)
            if self._ticks is not None and t > self._ticks[0]:
                s["cpu_pct"] = round(100.0 * (ticks - self._ticks[1]) / os.sysconf(
                    "SC_CLK_TCK") / (t - self._ticks[0]), 1)
            self._ticks = (t, ticks)
        s["cloudsim_rss_mb"] = _rss_mb(self.up.pids.get("cloudsim"))
        s["bench_rss_mb"] = _rss_mb(self.up.pids.get("bench"))
        try:
            async with http.get(self.up.url + "/api/health",
                                timeout=aiohttp.ClientTimeout(total=5)) as r:
                s["live_calls"] = (await r.json()).get("calls")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            s["live_calls"] = None
        self.samples.append(s)
        return s

    def _report(self, since: float, s: dict[str, Any]) -> None:
        """One progress line: the calls that ended since ``since`` and their turns."""
        done = [c for c in self.calls if c.get("end_s", -1.0) >= since]
        ids = {c["call"] for c in done}
        v2v = [float(t["v2v_ms"]) for t in self.turns
               if t["call"] in ids and isinstance(t.get("v2v_ms"), int | float)]
        lat = (f"v2v p50 {percentile(v2v, 50):.0f} / p95 {percentile(v2v, 95):.0f} ms"
               if v2v else "no reply measured")
        self.progress(
            f"  {s['t'] / 60:5.1f} min: {sum(c['outcome'] == 'completed' for c in done)} calls"
            f" completed, {sum(c['outcome'] != 'completed' for c in done)} failed, {lat};"
            f" server RSS {s.get('rss_mb', '-')} MB, {s.get('fds', '-')} FDs,"
            f" {s.get('threads', '-')} threads, {s.get('live_calls')} live calls;"
            f" load {s['load1']}")

    def _result(self, end_s: float, last_end: float, after: dict[str, Any]) -> dict[str, Any]:
        counts = {k: sum(c.get("outcome") == k for c in self.calls)
                  for k in ("completed", "failed", "refused")}
        counts["started"] = len(self.calls)
        # While every lane is past its ramp and before the first lane stops.
        steady = [s["in_flight"] for s in self.samples
                  if self.soak.calls * self.opts.ramp_s < s["t"] < end_s]
        during = [s for s in self.samples if s is not after]
        growth_end = min(end_s, max((s["t"] for s in during), default=end_s))
        return {
            "config": {"calls": self.soak.calls, "minutes": self.soak.minutes,
                       "sample_s": self.soak.sample_s, "window_s": self.soak.window_s,
                       "script": self.opts.script.name},
            "calls_count": counts,
            "concurrency": {"min": min(steady, default=None), "max": max(steady, default=None)},
            "samples": during,
            "after": {**after, "settle_s": self.soak.settle_s, "last_call_end_s":
                      round(last_end, 2)},
            "growth": {key: soak_report.growth(during, key, 0.0, growth_end)
                       for key, _, _ in soak_report.GROWTH_KEYS},
            "windows": soak_report.windows(self.turns, self.calls, self.soak.window_s, end_s),
            "edges": soak_report.edges(self.turns, min(self.soak.edge_s, end_s / 2), end_s),
            "calls": self.calls,
        }


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def run_soak(opts: BenchOptions, soak: SoakOptions,
             progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Start what ``opts`` needs, soak it (blocking), return the bench's results dict with
    one run (every call's turns) and a ``soak`` part."""
    opts.out.mkdir(parents=True, exist_ok=True)
    if soak.tracemalloc:
        from rejoinder.observability.memdebug import ENV

        if opts.url is not None:
            raise ValueError("tracemalloc needs the server the soak starts, not one at a URL")
        folder = (opts.out / "tracemalloc").resolve()
        opts = dataclasses.replace(opts, script=dataclasses.replace(
            opts.script, server=(*opts.script.server, (ENV, str(folder)))))
    load_before = _load()
    started_at = time.monotonic()
    with started(opts, progress) as up:
        progress(f"\nsoak: {soak.calls} calls for {soak.minutes:g} min, script "
                 f"{opts.script.name!r}; {load_before}")
        state = _Soak(up, opts, soak, progress)
        result = asyncio.run(state.run())
    result["load"] = {"before": load_before, "after": _load()}
    if len(state.snapshots) == 4:
        from rejoinder.observability.memdebug import diff

        before, middle, end, idle = state.snapshots
        text = ["Allocations that changed most from the middle of the soak to its end"
                " (calls live):",
                *diff(middle, end), "",
                "What the calls left: from before the first call to after the last (idle):",
                *diff(before, idle)]
        result["tracemalloc"] = str(opts.out / "tracemalloc.txt")
        Path(result["tracemalloc"]).write_text("\n".join(text) + "\n", encoding="utf-8")
        progress(f"allocation growth: {result['tracemalloc']}")
    result["wall_s"] = round(time.monotonic() - started_at, 1)
    run: dict[str, Any] = {"concurrency": soak.calls,
                           "calls": {k: result["calls_count"][k]
                                     for k in ("started", "refused", "failed", "completed")},
                           "turns": state.turns, "resources": {"samples": result["samples"]},
                           "errors": sorted(set(state.errors))}
    for e in run["errors"]:
        progress(f"  ! {e}")
    return {"meta": meta_of(opts, up), "runs": [run], "soak": result}


def write_soak(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.json, report.html (with the soak's section) and soak.txt."""
    from rejoinder.bench.report import write_report

    paths = write_report(results, out, [("Soak", soak_report.render_html(results["soak"]))])
    paths["table"] = out / "soak.txt"
    paths["table"].write_text(soak_report.render_table(results["soak"]), encoding="utf-8")
    return paths


__all__ = ["SoakOptions", "resources", "run_soak", "tree", "write_soak"]
