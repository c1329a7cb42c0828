"""``rejoinder bench``: N simulated callers against a server, at one or more concurrencies.

It starts what it needs (the simulated cloud in its own process, the server in its
own process) unless given ``--url``, runs the script on every call, samples the
processes' CPU and memory, and hands the per-turn numbers to the report.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from rejoinder.bench.caller import CallRecord, run_call
from rejoinder.bench.measure import ideal_ms, turns_of
from rejoinder.bench.scripts import Script
from rejoinder.client.connection import CallFailed
from rejoinder.client.measure import percentile
from rejoinder.cloudsim.process import stop_process

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchOptions:
    script: Script
    stack: str = "cloud"                 # cloud | local | fake (ignored with url)
    url: str | None = None               # an already running server
    concurrency: tuple[int, ...] = (1,)
    profile: str = "cloud-typical"
    cloud_overrides: dict[str, float | int | str] = field(default_factory=dict)
    max_calls: int = 100                 # the server's admission limit (when we start it)
    ramp_s: float = 0.2                  # between call starts
    out: Path = Path("bench-out")
    reply_timeout_s: float = 15.0
    transport: str = "webrtc"            # webrtc | twilio (phone calls via Media Streams)
    auth_token: str | None = None        # Twilio's, to sign with (generated when we start it)
    # The process of the server at ``url``, for its CPU and memory; None: the process
    # listening on the URL's loopback port, if it is one of this machine's.
    server_pid: int | None = None


@dataclass
class _Procs:
    server: subprocess.Popen[bytes] | None = None
    cloudsim: subprocess.Popen[str] | None = None


@dataclass(frozen=True)
class Started:
    """What :func:`started` brought up: where to call, whose resources to read, the ideal
    path with the simulated cloud's latencies (None, None without a profile)."""

    url: str
    opts: BenchOptions                       # with the auth token made up, if it was
    pids: dict[str, int | None]              # server, cloudsim, bench
    ideal: tuple[float | None, float | None]  # (ideal, ideal when the phrase cache has it)
    profile: Any                             # the CloudProfile, or None
    external_pid: int | None                 # the process of a server at --url, if found


@contextmanager
def started(opts: BenchOptions, progress: Callable[[str], None] = print) -> Iterator[Started]:
    """The simulated cloud and the server (unless ``opts.url``), stopped on exit."""
    with ExitStack() as stack:
        procs = _Procs()
        profile = None
        url = opts.url
        server_pid: int | None = None
        # The script's own simulated-cloud values, under those of the command line.
        cloud_overrides = {**_script_overrides(opts), **opts.cloud_overrides}
        if url is None and opts.transport == "twilio" and opts.auth_token is None:
            # The server we start checks every signature, as it would facing Twilio.
            opts = dataclasses.replace(opts, auth_token=secrets.token_hex(16))
        if url is None:
            env: dict[str, str] = {}
            if opts.stack == "cloud":
                from rejoinder.cloudsim.process import start_cloudsim, stop_cloudsim

                progress(f"starting the simulated cloud ({opts.profile})")
                procs.cloudsim, cloud_url = start_cloudsim(
                    opts.profile, **cloud_overrides)  # type: ignore[arg-type]
                stack.callback(stop_cloudsim, procs.cloudsim)
                env = {"REJOINDER_STT__PROVIDER": "remote", "REJOINDER_STT__URL": cloud_url,
                       # Audio up as it is spoken, interim words back (as the STT of any
                       # cloud voice stack); REJOINDER_STT__STREAMING=false: the batch one.
                       "REJOINDER_STT__STREAMING": os.environ.get("REJOINDER_STT__STREAMING",
                                                                  "true"),
                       "REJOINDER_LLM__PROVIDER": "openai", "REJOINDER_LLM__MODEL": "cloudsim",
                       "REJOINDER_LLM__BASE_URL": cloud_url + "/v1",
                       "REJOINDER_TTS__PROVIDER": "remote", "REJOINDER_TTS__URL": cloud_url,
                       # Silence alone ends the turn: a fixed end of turn keeps the ideal
                       # path exact, so the overhead is the orchestration's alone.
                       "REJOINDER_TURN__MODEL": "none",
                       # The simulated LLM writes canned words, never the analytics' JSON:
                       # each call would end in three failed post-call jobs on the cores the
                       # next calls are measured on.
                       "REJOINDER_ANALYTICS__ENABLED": "false"}
            progress(f"starting the server ({opts.stack} stack)")
            env.update(opts.script.server)
            env["REJOINDER_SERVER__MAX_CALLS"] = str(opts.max_calls)
            url, procs.server = stack.enter_context(server_process(
                opts.stack if opts.stack != "cloud" else "local", opts.out / "server.log", env,
                twilio_auth_token=opts.auth_token if opts.transport == "twilio" else None))
        if opts.stack == "cloud":
            from rejoinder.cloudsim.profile import load_profile

            profile = load_profile(opts.profile).with_overrides(
                _override_fields(cloud_overrides))
        health = asyncio.run(_health(url))
        if opts.url is not None and procs.server is None:
            server_pid = opts.server_pid or local_listener(opts.url)
            if server_pid is not None:
                progress(f"the server at {opts.url} is process {server_pid}: its CPU and"
                         " memory are sampled")
        ideal = ideal_cached = None
        if profile is not None:
            pause = health.get("pause_s") if health.get("speculate") else None
            ideal, ideal_cached = (round(ideal_ms(
                float(health.get("end_silence_s", 0.3)), profile.stt.final_s,
                profile.llm.ttft_s, profile.llm.tokens_per_s, profile.llm.reply, tts_s,
                None if pause is None else float(pause)), 1) for tts_s in (profile.tts.ttfb_s, 0.0))
            progress(f"ideal critical path with this profile: {ideal:.0f} ms "
                     f"({ideal_cached:.0f} ms when the first clause is in the phrase cache)")
        pids = {"server": procs.server.pid if procs.server else server_pid,
                "cloudsim": procs.cloudsim.pid if procs.cloudsim else None,
                "bench": os.getpid()}
        yield Started(url, opts, pids, (ideal, ideal_cached), profile, server_pid)


def meta_of(opts: BenchOptions, up: Started) -> dict[str, Any]:
    """The ``meta`` of a results dict: when, which code, which machine and stack."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _commit(),
        "host": {"cpus": os.cpu_count(), "mem_gb": _mem_gb()},
        "stack": (opts.stack if opts.url is None else "external" if up.external_pid is None
                  else f"running server (pid {up.external_pid})"),
        "profile": None if up.profile is None else dataclasses.asdict(up.profile),
        "script": opts.script.name,
        "transport": opts.transport,
        "command": " ".join(["rejoinder", "bench", *sys.argv[2:]]),
        "ideal_ms": up.ideal[0],
        "ideal_cached_ms": up.ideal[1],
    }


def run(opts: BenchOptions, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark (blocking) and return the results dict."""
    opts.out.mkdir(parents=True, exist_ok=True)
    with started(opts, progress) as up:
        runs = []
        for n in opts.concurrency:
            progress(f"\n{n} concurrent call(s), script {opts.script.name!r} "
                     f"({len(opts.script.turns)} turns each)")
            runs.append(asyncio.run(_run_level(up.url, n, up.opts, up.ideal, up.pids,
                                               progress)))
    return {"meta": meta_of(opts, up), "runs": runs}


@dataclass
class Placed:
    """One call placed by :func:`place_call`: how it ended and what it measured."""

    outcome: str                  # completed | refused | failed
    seconds: float                # from its offer to its hang-up
    record: CallRecord | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)  # measure.turns_of
    errors: list[str] = field(default_factory=list)


async def place_call(url: str, opts: BenchOptions, call: int,
                     ideal: tuple[float | None, float | None]) -> Placed:
    """Play ``opts.script`` in one call, within the script's own time limit; a refusal or
    a failure is returned (its error as text), never raised."""
    began = time.monotonic()
    limit = opts.script.lead_s + sum(
        len(t.audio) / 16_000 + t.gap_s + opts.reply_timeout_s for t in opts.script.turns)
    try:
        async with asyncio.timeout(limit + 30.0):
            record = await run_call(url, opts.script, reply_timeout_s=opts.reply_timeout_s,
                                    transport=opts.transport, auth_token=opts.auth_token)
    except CallFailed as exc:
        return Placed("refused" if exc.status == 503 else "failed",
                      time.monotonic() - began, errors=[str(exc)])
    except Exception as exc:
        log.exception("call %d failed", call)
        return Placed("failed", time.monotonic() - began, errors=[repr(exc)])
    errors = [f"the server sent {e['message']}" for e in record.events
              if e.get("type") == "protocol_error"]  # a phone call's, Twilio's view
    return Placed("completed", time.monotonic() - began, record, turns_of(record, call, *ideal),
                  errors)


async def _run_level(url: str, n: int, opts: BenchOptions,
                     ideal: tuple[float | None, float | None],
                     pids: dict[str, int | None], progress: Callable[[str], None]
                     ) -> dict[str, Any]:
    sampler = _Sampler(pids)
    sampling = asyncio.create_task(sampler.run())
    counts = {"started": n, "refused": 0, "failed": 0, "completed": 0}
    turns: list[dict[str, Any]] = []
    said: list[dict[str, Any]] = []  # the words of both sides (scripted speech: no one's data)
    tools: list[dict[str, Any]] = []  # tool calls as the caller's events tell them
    errors: list[str] = []
    lengths: list[float] = []  # seconds each call lasted, from its offer to its hang-up

    async def one(i: int) -> None:
        await asyncio.sleep(i * opts.ramp_s)
        placed = await place_call(url, opts, i, ideal)
        lengths.append(placed.seconds)
        counts[placed.outcome] += 1
        errors.extend(placed.errors)
        record = placed.record
        if record is None:
            return
        mine = placed.turns
        turns.extend(mine)
        tools.extend({"call": i, **{k: e.get(k) for k in ("turn", "name", "status", "ms",
                                                            "prefetched")}}
                     for e in record.events if e.get("type") == "tool")
        said.extend({"call": i, "turn": e.get("turn"), "who": e["type"], "text": e.get("text")}
                    for e in record.events if e.get("type") in ("user", "agent"))
        v2v = [t["v2v_ms"] for t in turns if t["v2v_ms"] is not None]
        progress(f"  call {counts['completed'] + counts['failed'] + counts['refused']}/{n} done"
                 f" ({sum(t['replied'] is True for t in mine)}"
                 f"/{sum(not t['backchannel'] for t in mine)} replies);"
                 f" so far v2v p50 {percentile(v2v, 50):.0f} ms, p95 {percentile(v2v, 95):.0f} ms")

    cpu = _CpuTime(pids)
    await asyncio.gather(*(one(i) for i in range(n)))
    sampling.cancel()
    used = cpu.used(sum(lengths))
    for e in sorted(set(errors)):
        progress(f"  ! {e}")
    if used["call_s"] > 0:
        progress("  CPU per call (CPU seconds / call seconds): " + ", ".join(
            f"{k} {100.0 * v / used['call_s']:.2f} % of a core"
            for k, v in used["cpu_s"].items()))
    return {"concurrency": n, "calls": counts, "turns": turns, "said": said, "tools": tools,
            "resources": {"samples": sampler.samples, **used}, "errors": sorted(set(errors))}


class _CpuTime:
    """CPU seconds (user + system) each process spent during a level. Divided by the calls'
    summed length it is CPU per call, which other load on the machine moves far less than
    it moves latency."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}
        self._start = time.monotonic()
        self._ticks = {k: _cpu_ticks(p) for k, p in self.pids.items()}

    def used(self, call_s: float) -> dict[str, Any]:
        tick = os.sysconf("SC_CLK_TCK")
        return {"cpu_s": {k: round((_cpu_ticks(p) - self._ticks[k]) / tick, 2)
                          for k, p in self.pids.items()},
                "wall_s": round(time.monotonic() - self._start, 2),
                "call_s": round(call_s, 2)}


class _Sampler:
    """CPU (% of one core) and RSS of the server, the simulator and the bench itself."""

    def __init__(self, pids: dict[str, int | None], every_s: float = 0.5) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}
        self.every_s = every_s
        self.samples: list[dict[str, float]] = []

    async def run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        start = time.monotonic()
        last = {k: _cpu_ticks(p) for k, p in self.pids.items()}
        last_t = start
        while True:
            await asyncio.sleep(self.every_s)
            now = time.monotonic()
            sample: dict[str, float] = {"t": round(now - start, 2)}
            for name, pid in self.pids.items():
                ticks = _cpu_ticks(pid)
                pct = 100.0 * (ticks - last[name]) / tick / (now - last_t)
                last[name] = ticks
                key = "cpu_pct" if name == "server" else f"{name}_cpu_pct"
                sample[key] = round(pct, 1)
                if name == "server":
                    sample["rss_mb"] = _rss_mb(pid)
            last_t = now
            self.samples.append(sample)


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return 0.0


@contextmanager
def server_process(kind: str, log_path: Path, env: dict[str, str] | None = None,
                   startup_timeout_s: float = 120.0, twilio_auth_token: str | None = None
                   ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``rejoinder serve --stack kind`` in a child process on a free loopback port.

    Yields its URL once ``/api/health`` answers; its output goes to ``log_path``; it is
    terminated on exit. A child that exits or never answers raises RuntimeError.
    With ``twilio_auth_token`` its phone path is on, at its own URL, unsigned requests
    refused.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if twilio_auth_token is not None:
        env = {**(env or {}), "REJOINDER_TELEPHONY__PUBLIC_URL": f"http://127.0.0.1:{port}",
               "REJOINDER_TELEPHONY__TWILIO_AUTH_TOKEN": twilio_auth_token,
               "REJOINDER_TELEPHONY__ALLOW_UNSIGNED": "false"}
    env = dict(env or {})
    if not any(k in os.environ or k in env
               for k in ("REJOINDER_STORE__PATH", "REJOINDER_STORE__URL")):
        # The bench's calls are recorded beside its results, not among the user's own calls.
        env["REJOINDER_STORE__PATH"] = str(Path(log_path).parent / "calls.db")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rejoinder", "serve", "--stack", kind,
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}); see {log_path}")
            try:
                asyncio.run(_health(url))
                break
            except (aiohttp.ClientError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start; see {log_path}") from None
                time.sleep(0.1)
        yield url, proc
    finally:
        stop_process(proc, 10, "server")


def local_listener(url: str) -> int | None:
    """The process listening on ``url``'s port, when its host is this machine's loopback and
    the process is visible to us (Linux ``/proc``); else None."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == parts.port:
                inodes.add(f"socket:[{fields[9]}]")  # state 0A: listening
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


async def _health(url: str) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession() as http, http.get(url + "/api/health",
                                                         timeout=timeout) as r:
        return dict(await r.json())


def _script_overrides(opts: BenchOptions) -> dict[str, float | int | str]:
    """The script's ``[cloud]`` values by override name (``llm.tool_calls``: llm_tool_calls)."""
    from rejoinder.cloudsim.profile import override_flags

    by_field = {flag.field: dest for dest, flag in override_flags().items()}
    unknown = [key for key, _ in opts.script.cloud if key not in by_field]
    if unknown:
        from rejoinder.core.errors import ConfigError

        raise ConfigError(f"cloud.{unknown[0]}", "not a simulated cloud profile field")
    return {by_field[key]: value for key, value in opts.script.cloud}


def _override_fields(overrides: dict[str, float | int | str]) -> dict[str, object]:
    from rejoinder.cloudsim.profile import override_flags

    flags = override_flags()
    return {flags[k].field: flags[k].kind(v) for k, v in overrides.items() if k in flags}


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _mem_gb() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return 0.0


def write_results(results: dict[str, Any], out: Path) -> dict[str, Path]:
    from rejoinder.bench.report import write_report

    paths = write_report(results, out)
    return paths


__all__ = ["BenchOptions", "Placed", "Started", "meta_of", "place_call", "run", "server_process",
           "started", "write_results"]
