"""Provider fallback under a live call: a provider killed -9 mid-reply costs no call.

    python -m rejoinder.bench.fallback_call [--runs 5] [--out bench-out/fallback-call]

Per run: two simulated clouds (``python -m rejoinder.cloudsim``, each its own process), the
*primary* first and the *fallback* second in the server's ``[[llm.backends]]`` and
``[[tts.backends]]`` (STT on the fallback alone); ``rejoinder serve`` on them; one real
WebRTC caller with ``UTTERANCES`` utterances. When the caller hears the first clause of
turn ``KILL_TURN``, the primary is killed with SIGKILL (its LLM is still streaming the
reply, its TTS saying the clauses); it is started again on the same port
``RESTART_AFTER_S`` later (LibriVox utterances, real speech, each followed by
``GAP_S`` of silence). Each turn's *reply time* is measured at the caller, from its
first clause to its end (the turn's record, sent once the reply has played); the time
added by the kill is the hit turn's reply time less the median of the turns before it.

The test (tests/test_fallback_call.py) runs it once and checks the outcome; this command
repeats it and reports the time added (p50, p95, max over the runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from rejoinder.bench.fallback import SIM
from rejoinder.bench.scripts import load_script
from rejoinder.client.caller import place_call
from rejoinder.cloudsim.process import Process, start_cloudsim, stop_cloudsim, stop_process
from rejoinder.core.audio import PCM, SAMPLE_RATE

# Two clauses of more than the phrase cache's 8 words: every turn's TTS goes to the chain.
# At 10 tokens a second the LLM still streams the second for about a second after the
# first is heard.
REPLY = "The salon on the high street opens at nine. On Saturdays it opens an hour later at ten."
CLOUD: dict[str, float | int | str] = {**SIM, "llm_reply": REPLY, "llm_tokens_per_s": 10}
UTTERANCES = 4
KILL_TURN = 3
# Long enough for the reply's later clauses to meet it dead (TTS works a clause ahead of
# the audio), short enough to be back before the next turn.
RESTART_AFTER_S = 3.0
GAP_S = 8.0  # silence after each utterance: the reply (about 5 s of audio) plays whole
LIMIT_S = 1.0  # each backend's first-item and idle limits
COOLDOWN_S = 5.0  # the primary's breaker, once open, probes it again after this



def caller_audio() -> PCM:
    """The first ``UTTERANCES`` turns of the LibriVox script (real speech: the server's VAD
    is Silero), each followed by ``GAP_S`` of silence."""
    script = load_script("librivox")
    gap = np.zeros(round(GAP_S * SAMPLE_RATE), dtype=np.int16)
    parts = [np.zeros(round(0.5 * SAMPLE_RATE), dtype=np.int16)]
    for turn in script.turns[:UTTERANCES]:
        parts += [turn.audio, gap]
    return np.concatenate(parts)


@dataclass
class Outcome:
    """What one call saw, and what the server kept of it."""

    call_id: str = ""
    killed_at: float | None = None  # monotonic, at the caller
    clauses: dict[int, list[tuple[float, str]]] = field(default_factory=dict)
    traces: dict[int, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)  # GET /api/calls/{id}
    counts: dict[str, float] = field(default_factory=dict)  # fallback metrics, by sample

    def text(self, turn: int) -> str:
        return " ".join(text for _, text in self.clauses.get(turn, []))

    def reply_s(self, turn: int) -> float:
        """From the turn's first clause to its record (sent once it has played)."""
        return self.traces[turn][0] - self.clauses[turn][0][0]

    def added_s(self, turn: int = KILL_TURN) -> float:
        before = [self.reply_s(t) for t in range(1, turn)]
        return self.reply_s(turn) - statistics.median(before)


def _config(primary: str, fallback: str, store: Path) -> str:
    def backend(kind: str, name: str, url: str) -> str:
        where = f'base_url = "{url}/v1"\nmodel = "cloudsim"' if kind == "llm" else \
            f'url = "{url}"'
        provider = "openai" if kind == "llm" else "remote"
        return (f'[[{kind}.backends]]\nname = "{name}"\nprovider = "{provider}"\n{where}\n'
                f"timeout_s = {LIMIT_S}\nstream_idle_timeout_s = {LIMIT_S}\n"
                f"breaker_cooldown_s = {COOLDOWN_S}\n")
    chains = "\n".join(backend(kind, name, url) for kind in ("llm", "tts")
                       for name, url in (("primary", primary), ("fallback", fallback)))
    return (f'[stt]\nprovider = "remote"\nurl = "{fallback}"\n\n'
            '[turn]\nmodel = "none"\n\n[analytics]\nenabled = false\n\n'
            f'[store]\npath = "{store}"\n\n{chains}')


@contextlib.contextmanager
def _server(config: Path, log: Path, port: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rejoinder", "serve", "--stack", "local",
                                 "--config", str(config), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop_process(proc, 40, "server")


async def _until_up(url: str, proc: subprocess.Popen[bytes], limit_s: float = 120.0) -> None:
    async with aiohttp.ClientSession() as http, asyncio.timeout(limit_s):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode})")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/api/health") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)


def _fallback_counts(metrics: str) -> dict[str, float]:
    """The chains' samples of ``/metrics``: {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith(("rejoinder_provider_fallbacks_total",
                            "rejoinder_provider_timeouts_total",
                            "rejoinder_provider_breaker_transitions_total")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def _call(url: str, primary: list[Process], primary_port: int) -> Outcome:
    outcome = Outcome()
    restarted: list[asyncio.Task[None]] = []

    async def restart() -> None:
        await asyncio.sleep(RESTART_AFTER_S)
        process, _ = await asyncio.to_thread(lambda: start_cloudsim(
            "fast", port=primary_port, **CLOUD))  # type: ignore[arg-type]
        primary.append(process)

    def on_event(event: dict[str, Any]) -> None:
        now = time.monotonic()
        kind, turn = event.get("type"), int(event.get("turn") or 0)
        if kind == "agent":
            outcome.clauses.setdefault(turn, []).append((now, str(event["text"])))
            if turn == KILL_TURN and outcome.killed_at is None:
                os.kill(primary[-1].pid, signal.SIGKILL)  # mid-reply
                outcome.killed_at = now
                restarted.append(asyncio.create_task(restart()))
        elif kind == "trace":
            outcome.traces[turn] = (now, event)
            outcome.call_id = str(event["call_id"])
        elif kind == "error":
            outcome.errors.append(event)

    await place_call(url, caller_audio(), tail_s=10.0, on_event=on_event)
    for task in restarted:
        await task
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/api/calls/{outcome.call_id}") as r:
            outcome.record = await r.json()
        async with http.get(f"{url}/metrics") as r:
            outcome.counts = _fallback_counts(await r.text())
    return outcome


async def run_once(out: Path) -> Outcome:
    """One call through a primary killed mid-reply at turn ``KILL_TURN`` and restarted."""
    from rejoinder.cluster.bus import free_port

    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    primary_port = free_port()
    first, p_url = await asyncio.to_thread(lambda: start_cloudsim(
        "fast", port=primary_port, **CLOUD))  # type: ignore[arg-type]
    primary = [first]
    try:
        fallback, f_url = await asyncio.to_thread(lambda: start_cloudsim(
            "fast", **CLOUD))  # type: ignore[arg-type]
        try:
            config = out / "server.toml"
            config.write_text(_config(p_url, f_url, out / "calls.db"))
            with _server(config, out / "server.log", free_port()) as (url, proc):
                await _until_up(url, proc)
                return await _call(url, primary, primary_port)
        finally:
            stop_cloudsim(fallback)
    finally:
        for process in primary:
            stop_cloudsim(process)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-out/fallback-call"))
    args = parser.parse_args(argv)
    added: list[float] = []
    for i in range(args.runs):
        o = asyncio.run(run_once(args.out / f"run{i + 1}"))
        answered = sum(1 for _, t in o.traces.values() if t["outcome"] == "completed")
        healthy = statistics.median(o.reply_s(t) for t in range(1, KILL_TURN))
        added.append(o.added_s())
        print(f"run {i + 1}: {answered}/{UTTERANCES} turns answered, hit turn whole: "
              f"{o.text(KILL_TURN) == REPLY}, healthy reply {healthy * 1000:.0f} ms, "
              f"added to the hit turn {added[-1] * 1000:+.0f} ms, turns stored: "
              f"{len(o.record.get('turns', []))}", flush=True)
        print("  " + json.dumps(o.counts), flush=True)
    ms = [a * 1000 for a in added]
    print(f"time added to the turn hit by the kill, over {len(ms)} runs: p50 "
          f"{_pct(ms, 0.5):+.0f} ms, p95 {_pct(ms, 0.95):+.0f} ms, max {max(ms):+.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
