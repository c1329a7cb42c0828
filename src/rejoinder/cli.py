"""The ``rejoinder`` command: ``serve`` and ``call``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rejoinder.core.errors import ProviderError, RejoinderError

if TYPE_CHECKING:
    from rejoinder.bench.runner import BenchOptions

log = logging.getLogger("rejoinder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rejoinder", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the voice agent server")
    _server_options(serve)
    serve.add_argument("--workers", type=int, default=0, metavar="N",
                       help="run N worker processes behind a gateway over NATS (a local"
                            " nats-server unless bus.url is set); 0: one process")
    worker = sub.add_parser("worker", help="run a worker for a gateway (needs bus.url)")
    _server_options(worker)
    worker.add_argument("--id", default="", help="this worker's name (default: host-pid)")
    gateway = sub.add_parser("gateway", help="run the gateway of workers (needs bus.url)")
    _server_options(gateway)

    call = sub.add_parser("call", help="call a server with a WAV as the microphone")
    call.add_argument("--wav", type=Path, required=True, help="16-bit PCM WAV to speak")
    call.add_argument("--out", type=Path, help="write what the agent said to this WAV")
    call.add_argument("--url", default="http://127.0.0.1:8080", help="server URL")
    call.add_argument("--json", type=Path, help="write the per-turn results as JSON")
    call.add_argument("--tail", type=float, default=20.0,
                      help="seconds to wait for the last reply after the WAV ends")
    call.add_argument("--min-gap", type=float, default=0.7,
                      help="silence (s) that separates two utterances in the WAV")
    call.add_argument("--jitter-frames", type=int, default=0,
                      help="the caller's own jitter buffer, in 20 ms frames (0: measure on"
                           " arrival)")
    _transport_options(call)

    bench = sub.add_parser("bench", help="measure latency with simulated callers")
    bench.add_argument("--script", default="librivox",
                       help="conversation script: a shipped name or a .toml path")
    bench.add_argument("--stack", choices=["cloud", "local", "fake"], default="cloud",
                       help="cloud: simulated cloud providers in their own process; local:"
                            " the embedded models; fake: in-process fakes")
    bench.add_argument("--url", help="bench an already running server instead")
    bench.add_argument("--port", type=int,
                       help="bench the server already running on this loopback port"
                            " (--url http://127.0.0.1:PORT)")
    bench.add_argument("--server-pid", type=int, help="with --url or --port: the server's"
                       " process, for its CPU and memory (default: the process listening on"
                       " a loopback port)")
    bench.add_argument("--calls", type=int, default=1, help="concurrent calls (1-100)")
    bench.add_argument("--sweep", help="comma-separated concurrencies, e.g. 1,10,25,50")
    bench.add_argument("--profile", default="cloud-typical",
                       help="simulated cloud latency profile: a shipped name or a .toml path")
    bench.add_argument("--cloud", action="append", default=[], metavar="KEY=VALUE",
                       help="override a profile value, e.g. llm_ttft=0.3 (repeatable)")
    bench.add_argument("--max-calls", type=int, default=100,
                       help="the server's admission limit (when the bench starts it)")
    bench.add_argument("--ramp", type=float, default=0.2, help="seconds between call starts")
    bench.add_argument("--out", type=Path, default=Path("bench-out"),
                       help="folder for results.json, report.html and server.log")
    bench.add_argument("--write-wav", type=Path, metavar="WAV",
                       help="only write the script's turns as one WAV for `rejoinder call`"
                            " (turns --gap seconds apart), then exit")
    bench.add_argument("--gap", type=float, default=9.0, help="silence after each turn in"
                       " --write-wav")
    bench.add_argument("--soak-minutes", type=float, metavar="M",
                       help="a soak: keep --calls calls going for M minutes (a new call as"
                            " each ends) and sample the server's RSS, open files and threads")
    bench.add_argument("--soak-sample", type=float, default=10.0, metavar="S",
                       help="seconds between a soak's samples")
    bench.add_argument("--soak-window", type=float, default=60.0, metavar="S",
                       help="a soak's latency and call counts per window of S seconds")
    bench.add_argument("--tracemalloc", action="store_true",
                       help="a soak's debug mode: the server it starts traces allocations;"
                            " tracemalloc.txt: what grew from the middle to the end, and what"
                            " the calls left (slower: not for figures)")
    _transport_options(bench)

    fuzz = sub.add_parser("fuzz", help="send generated requests and messages to a server;"
                          " fail on a 5xx, a leaked call slot or growing memory")
    fuzz.add_argument("--url", help="fuzz this running server (default: start"
                      " `rejoinder serve --stack fake` and fuzz that)")
    fuzz.add_argument("--pid", type=int, help="the server's process id, for its memory")
    fuzz.add_argument("--requests", type=int, default=10_000,
                      help="requests and WebSocket messages to send")
    fuzz.add_argument("--seed", type=int, default=0)
    fuzz.add_argument("--concurrency", type=int, default=8)
    fuzz.add_argument("--auth-token", help="the server's Twilio auth token: sign some"
                      " phone requests with it")
    fuzz.add_argument("--public-url", help="the server's telephony.public_url (what"
                      " Twilio signs; default --url)")
    fuzz.add_argument("--settle-s", type=float, default=60.0,
                      help="seconds the calls it started get to time out")
    fuzz.add_argument("--rss-growth-mb", type=float, default=64.0,
                      help="fail when the server's RSS grows more than this")

    # Listed here for --help; its options are its own parser's (cloudsim.service), which
    # gets every argument after the word "cloudsim" untouched.
    sub.add_parser("cloudsim", help="run the simulated cloud providers (see "
                   "`rejoinder cloudsim --help`)", add_help=False)

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["cloudsim"]:
        from rejoinder.cloudsim.service import main as cloudsim_main

        return cloudsim_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        if args.command in ("serve", "worker", "gateway"):
            return _serve(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "fuzz":
            return _fuzz(args)
        return _call(args)
    except RejoinderError as exc:
        print(f"rejoinder: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _fuzz(args: argparse.Namespace) -> int:
    from rejoinder.bench.fuzz import fuzz, fuzz_own_server

    if args.url:
        report = asyncio.run(fuzz(args.url, args.requests, seed=args.seed,
                                  concurrency=args.concurrency, auth_token=args.auth_token,
                                  public_url=args.public_url, pid=args.pid,
                                  settle_s=args.settle_s,
                                  rss_growth_max_mb=args.rss_growth_mb))
    else:
        report = asyncio.run(fuzz_own_server(args.requests, seed=args.seed,
                                             concurrency=args.concurrency,
                                             auth_token=args.auth_token,
                                             settle_s=args.settle_s,
                                             rss_growth_max_mb=args.rss_growth_mb))
    print(report.summary())
    return 0 if report.ok else 1


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080)")
    parser.add_argument("--stack", choices=["local", "fake"], default="local",
                        help="local: embedded offline models; fake: fixed-latency fakes")
    parser.add_argument("--agent", help="a built-in agent (its prompt, greeting and tools):"
                        " booking", metavar="PROFILE")


def _serve(args: argparse.Namespace) -> int:
    """``serve`` (one process, or ``--workers N``), ``worker`` and ``gateway``."""
    import dataclasses

    from rejoinder.config import load_config
    from rejoinder.observability.logs import setup_logging

    if args.agent:  # as [agent] profile, over the file (explicit prompt or tools still win)
        import os

        config = load_config(args.config, {**os.environ, "REJOINDER_AGENT__PROFILE": args.agent})
    else:
        config = load_config(args.config)
    server = config.server
    if args.host:
        server = dataclasses.replace(server, host=args.host)
    if args.port is not None:
        server = dataclasses.replace(server, port=args.port)
    config = dataclasses.replace(config, server=server)
    setup_logging(config.log.level, config.log.json)
    workers = getattr(args, "workers", 0)
    if workers < 0:
        raise RejoinderError("--workers must be 0 (one process) or more")

    async def run() -> None:
        from rejoinder.observability import memdebug

        stop = asyncio.Event()
        _set_on_sigterm(stop)
        memdebug.install()  # only with REJOINDER_DEBUG_TRACEMALLOC set
        if args.command == "serve" and not workers:
            stack = await _ready_stack(config, args.stack)
            try:
                await _listening(run_server(config, stack, stop=stop), server.host,
                                 server.port)
            finally:
                await stack.close()
            return
        if args.command == "worker":
            from rejoinder.cluster.worker import run_worker

            stack = await _ready_stack(config, args.stack)
            try:
                await _listening(run_worker(config, stack, _worker_id(args), stop),
                                 server.host, server.port)
            finally:
                await stack.close()
            return
        if args.command == "gateway":
            await _gateway(config, args.stack, stop, None)
            return
        from rejoinder.cluster.supervisor import run_local_cluster

        passed = ["--stack", args.stack, *(["--config", str(args.config)] if args.config else []),
                  *(["--agent", args.agent] if args.agent else [])]
        await run_local_cluster(config, workers, passed,
                                lambda c, s, gone: _gateway(c, args.stack, s, gone), stop)

    from rejoinder.server.app import run_server

    asyncio.run(run())  # SIGTERM: drained, then here
    log.info("stopped")
    return 0


async def _ready_stack(config: Any, kind: str) -> Any:
    """The providers loaded, the tools, warm, and the phrases said often primed."""
    from rejoinder.providers.base import ChatMessage
    from rejoinder.providers.factory import build_stack
    from rejoinder.turn.clauses import split_clauses

    log.info("loading %s providers", kind)
    stack = await asyncio.to_thread(build_stack, config, kind)
    try:
        from rejoinder.tools import load_tools

        stack.tools = await load_tools(config.agent) or None  # a bad one: ConfigError
        await stack.warm([ChatMessage("system", config.agent.system_prompt)])
        prime = getattr(stack.tts, "prime", None)
        if prime is not None:  # the greeting and the filler cost nothing when said
            t, a = config.turn, config.agent
            await prime([*split_clauses(a.greeting, t.clause_min_words),
                         *split_clauses(t.filler, t.clause_min_words),
                         *([a.tool_filler, a.tool_apology] if stack.tools else []),
                         *([stack.guardrails.safe_line] if stack.guardrails else [])])
    except ProviderError as exc:
        await stack.close()
        raise RejoinderError(f"a provider is not ready: {exc}") from exc
    except BaseException:
        await stack.close()
        raise
    log.info("providers warm")
    return stack


async def _listening(serving: Any, host: str, port: int) -> None:
    try:
        await serving
    except OSError as exc:  # the address or port cannot be bound
        raise RejoinderError(_bind_problem(host, port, exc)) from exc


async def _gateway(config: Any, kind: str, stop: asyncio.Event,
                   workers_gone: asyncio.Event | None) -> None:
    """The gateway: its stack serves post-call analytics only, so it is loaded, not warmed."""
    from rejoinder.cluster.gateway import run_gateway
    from rejoinder.providers.factory import build_stack

    stack = await asyncio.to_thread(build_stack, config, kind)
    try:
        await _listening(run_gateway(config, stack, stop=stop, workers_gone=workers_gone),
                         config.server.host, config.server.port)
    finally:
        await stack.close()


def _worker_id(args: argparse.Namespace) -> str:
    import os
    import socket

    return str(args.id or f"{socket.gethostname()}-{os.getpid()}")


def _set_on_sigterm(stop: asyncio.Event) -> None:
    """SIGTERM drains (rejoinder.server.drain): ``stop`` is set, and the server stops
    admitting calls; Ctrl-C stops at once."""
    import signal

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    """One line for a server that cannot listen, naming the setting to change."""
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (server.port, --port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine (server.host, --host)"
    if exc.errno == errno.EACCES:
        return f"no permission to listen on port {port} (server.port, --port)"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def _bench(args: argparse.Namespace) -> int:
    from rejoinder.bench.report import render_table
    from rejoinder.bench.runner import BenchOptions, run, write_results
    from rejoinder.bench.scripts import load_script

    logging.basicConfig(level=logging.WARNING)
    if args.write_wav:
        import numpy as np

        from rejoinder.core.audio import SAMPLE_RATE, write_wav

        script = load_script(args.script)
        silence = np.zeros(round(args.gap * SAMPLE_RATE), dtype=np.int16)
        parts = [np.zeros(round(script.lead_s * SAMPLE_RATE), dtype=np.int16)]
        for turn in script.turns:
            parts += [turn.audio, silence]
        write_wav(args.write_wav, np.concatenate(parts), SAMPLE_RATE)
        print(f"{len(script.turns)} turns written to {args.write_wav}")
        return 0
    levels = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.calls]
    if any(not 1 <= n <= 100 for n in levels):
        print("rejoinder: concurrency must be between 1 and 100", file=sys.stderr)
        return 2
    overrides = dict(kv.split("=", 1) for kv in args.cloud)
    if args.port is not None:
        if args.url:
            print("rejoinder: give --url or --port, not both", file=sys.stderr)
            return 2
        args.url = f"http://127.0.0.1:{args.port}"
    opts = BenchOptions(script=load_script(args.script), stack=args.stack, url=args.url,
                        server_pid=args.server_pid,
                        concurrency=tuple(levels), profile=args.profile,
                        cloud_overrides=overrides, max_calls=args.max_calls, ramp_s=args.ramp,
                        out=args.out, transport=args.transport,
                        auth_token=_auth_token(args) if args.url else args.auth_token)
    if args.soak_minutes is not None:
        return _soak(args, opts)
    results = run(opts, progress=lambda line: print(line, flush=True))
    paths = write_results(results, args.out)
    print()
    print(render_table(results))
    print("\n".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


def _soak(args: argparse.Namespace, opts: BenchOptions) -> int:
    from rejoinder.bench.soak import SoakOptions, run_soak, write_soak
    from rejoinder.bench.soak_report import render_table

    if args.sweep:
        print("rejoinder: a soak runs one concurrency (--calls), not --sweep", file=sys.stderr)
        return 2
    if args.tracemalloc and args.url:
        print("rejoinder: --tracemalloc needs the server the soak starts (no --url, --port)",
              file=sys.stderr)
        return 2
    try:
        soak = SoakOptions(calls=args.calls, minutes=args.soak_minutes,
                           sample_s=args.soak_sample, window_s=args.soak_window,
                           tracemalloc=args.tracemalloc)
    except ValueError as exc:
        print(f"rejoinder: {exc}", file=sys.stderr)
        return 2
    results = run_soak(opts, soak, progress=lambda line: print(line, flush=True))
    paths = write_soak(results, args.out)
    print()
    print(render_table(results["soak"]))
    print("\n".join(f"{name}: {path}" for name, path in paths.items()))
    return 0


def _transport_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--transport", choices=["webrtc", "twilio"], default="webrtc",
                        help="webrtc: like the web page; twilio: a phone call through the"
                             " server's Twilio webhook and media stream (8 kHz mu-law)")
    parser.add_argument("--auth-token", help="Twilio auth token to sign requests with"
                        " (default: $REJOINDER_TELEPHONY__TWILIO_AUTH_TOKEN, as the server"
                        " reads it; a bench that starts the server makes one up)")


def _auth_token(args: argparse.Namespace) -> str | None:
    import os

    token: str | None = args.auth_token or os.environ.get(
        "REJOINDER_TELEPHONY__TWILIO_AUTH_TOKEN")
    return token


def _call(args: argparse.Namespace) -> int:
    from rejoinder.client.caller import place_call
    from rejoinder.client.measure import summarize
    from rejoinder.core.audio import SAMPLE_RATE, read_wav, write_wav

    logging.basicConfig(level=logging.WARNING)
    pcm = read_wav(args.wav, SAMPLE_RATE)

    def live(event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "user":
            print(f"  you   [{event['turn']}]: {event['text']}", flush=True)
        elif kind == "agent":
            print(f"  agent [{event['turn']}]: {event['text']}", flush=True)
        elif kind == "interrupted":
            print(f"  agent [{event['turn']}] interrupted; heard: {event['heard']!r}", flush=True)
        elif kind == "error":
            print(f"  error [{event.get('turn')}]: {event.get('message')}", flush=True)

    print(f"calling {args.url} with {args.wav} ({len(pcm) / SAMPLE_RATE:.1f} s)", flush=True)
    if args.transport == "twilio":
        from rejoinder.client.phone import place_phone_call

        result = asyncio.run(place_phone_call(args.url, pcm, auth_token=_auth_token(args),
                                              tail_s=args.tail, min_gap_s=args.min_gap))
        for e in result.events:
            print(f"  the server sent {e['message']} (Twilio would not accept it)")
    else:
        result = asyncio.run(place_call(args.url, pcm, tail_s=args.tail,
                                        min_gap_s=args.min_gap,
                                        jitter_frames=args.jitter_frames, on_event=live,
                                        on_status=lambda m: print(f"  {m}", flush=True)))
    print(f"\ncall {result.call_id}: voice-to-voice latency measured at the caller")
    # Turns are numbered as the server numbers them (the transcript above, /api/calls, the
    # page; a greeting is turn 1); "-": the server reported no turn for that utterance.
    print(f"{'turn':>4} {'v2v ms':>8}  server stages (ms after server end of speech)")
    for t in result.turns:
        v2v = "no reply" if t.v2v_ms is None else f"{t.v2v_ms:8.0f}"
        stages = (t.server or {}).get("ms_after_speech_end", {})
        brief = " ".join(f"{k}={v:.0f}" for k, v in stages.items() if k != "speech_end")
        print(f"{'-' if t.turn is None else t.turn:>4} {v2v:>8}  {brief}")
    lat = result.latencies()
    if lat:
        s = summarize(lat[1:] if len(lat) > 1 else lat)
        print(f"\nfirst turn: {lat[0]:.0f} ms; later turns: p50 {s['p50']:.0f} ms, "
              f"p95 {s['p95']:.0f} ms, max {s['max']:.0f} ms (n={int(s['n'])})")
        a = summarize(lat)
        print(f"all turns: p50 {a['p50']:.0f} ms, p95 {a['p95']:.0f} ms (n={int(a['n'])})")
    missing = sum(1 for t in result.turns if t.v2v_ms is None)
    if missing:
        print(f"{missing} utterance(s) got no reply before the next one started")
    if args.out:
        import numpy as np

        audio = np.concatenate(result.received.chunks) if result.received.chunks else \
            np.zeros(0, dtype=np.int16)
        write_wav(args.out, audio, result.received.rate)
        print(f"agent audio written to {args.out}")
    if args.json:
        args.json.write_text(json.dumps({
            "call_id": result.call_id,
            "turns": [{"turn": t.turn, "utterance": t.index, "v2v_ms": t.v2v_ms,
                       "user_text": t.user_text,
                       "agent_text": t.agent_text, "server": t.server} for t in result.turns],
        }, indent=2))
    return 0 if lat else 1
