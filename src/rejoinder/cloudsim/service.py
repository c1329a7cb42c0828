"""The simulated cloud over HTTP: the fake providers of :mod:`rejoinder.testing.fakes` behind
the endpoints a real vendor would offer, so that the server reaches them over sockets.

    POST /v1/chat/completions   OpenAI-compatible, streaming only (SSE); the canned reply word
                                by word: first after ``llm.ttft_s``, then every 1/tokens_per_s;
                                or, where ``llm.tool_calls`` has a next call for this
                                caller turn and the request offers it, that tool call, its
                                arguments streamed in pieces at the same pace
    POST /v1/stt                raw PCM16 mono (X-Sample-Rate, default 16000) -> {"text": ...},
                                ``stt.final_s`` after the body is received; the text is the
                                X-Transcript header if sent, else the profile's
                                ``stt.transcript``, else "utterance of 2.3 seconds"
    GET  /v1/stt/stream         WebSocket, one per utterance (:mod:`.sttstream`): binary
                                PCM16 audio up (?sample_rate=16000) as it is spoken;
                                {"type": "partial", "text"} down every
                                ``stt.partial_interval_s``, ``stt.partial_lag_s`` behind
                                the audio; {"type": "finalize"} up -> {"type": "final",
                                "text"} ``stt.final_s`` later; the socket stays open
    POST /v1/tts                {"text": ..., "sample_rate"?: int} -> chunked raw PCM16 mono
                                (X-Sample-Rate): first chunk after ``tts.ttfb_s``, then a chunk
                                of d seconds every d * rtf; a 440 Hz tone, 0.3 s per word
    GET  /health                {"ok": true, "profile": {...}}

Every response runs on its own :class:`Timeline`: the waits are counted from when the request
arrived, so the simulator's own work does not add up into the profile's pacing.

Injected failures: a "timeout" request is never answered (no headers; the handler waits until
the client disconnects); a "drop" closes the connection midway (no [DONE], partial audio;
a streaming STT socket is cut at its first finalize, after the partials).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import numpy as np
from aiohttp import web

from rejoinder.cloudsim.faults import FaultDice
from rejoinder.cloudsim.profile import Profile, load_profile, override_flags
from rejoinder.cloudsim.sttstream import (
    MAX_RATE,
    MIN_RATE,
    StreamSession,
    sample_rate,
    seconds_text,
)
from rejoinder.cloudsim.timeline import Timeline
from rejoinder.core.audio import PCM
from rejoinder.core.clock import Clock
from rejoinder.core.errors import ConfigError
from rejoinder.providers.base import ChatMessage
from rejoinder.testing.fakes import FakeLLM, FakeSTT, FakeTTS, Latency

log = logging.getLogger(__name__)

T = TypeVar("T")
ROLES = ("system", "user", "assistant")


class CloudSim:
    """The three simulated services of one profile. ``app()`` builds the aiohttp application."""

    def __init__(self, profile: Profile, clock: Clock | None = None) -> None:
        self.profile = profile
        self.clock = clock or Clock()
        self._dice = {name: FaultDice(getattr(profile, name), profile.seed)
                      for name in ("stt", "llm", "tts")}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # ~30 min of 16 kHz audio
        app.router.add_get("/health", self.health)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/stt", self.stt)
        app.router.add_get("/v1/stt/stream", self.stt_stream)
        app.router.add_post("/v1/tts", self.tts)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "profile": dataclasses.asdict(self.profile)})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if body.get("stream") is not True:
            return _error(400, "this server only streams: send \"stream\": true")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "\"messages\" must be a non-empty list")
        p = self.profile.llm
        words = p.reply.split()
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0:
            words = words[:max_tokens]
        call = _scripted_call(p.calls(), messages, body.get("tools"))
        if call is not None:  # the arguments' pieces stream as the words would
            words = call[1].split(" ")
        fault, seed = self._dice["llm"].roll()
        llm = FakeLLM([" ".join(words)], Latency(
            first_s=p.ttft_s, per_item_s=p.token_interval_s, jitter_s=p.jitter_s, fail=fault,
            fail_after=max(1, len(words) // 2), seed=seed), Timeline(self.clock))
        model = str(body.get("model") or "cloudsim")
        chunk_id = f"chatcmpl-{seed:08x}"
        created = int(time.time())

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                     "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        if call is not None:
            first = [True]

            def piece(token: object) -> bytes:
                fn = {"arguments": str(token)}
                entry: dict[str, Any] = {"index": 0, "function": fn}
                if first[0]:  # the first delta names the call
                    first[0] = False
                    entry.update(id=f"call_{seed:08x}", type="function")
                    fn["name"] = call[0]
                return event({"tool_calls": [entry]})

            return await _relay(request, resp, llm._stream(_chat_messages(messages)), piece,
                                event({}, "tool_calls") + b"data: [DONE]\n\n")
        # The public ``stream()`` would add a client-side time limit; a server has none.
        return await _relay(request, resp, llm._stream(_chat_messages(messages)),
                            lambda token: event({"content": str(token)}),
                            event({}, "stop") + b"data: [DONE]\n\n")

    async def stt(self, request: web.Request) -> web.Response:
        try:
            rate = int(request.headers.get("X-Sample-Rate", "16000"))
        except ValueError:
            rate = 0
        if rate <= 0:
            return _error(400, "X-Sample-Rate must be a positive integer")
        body = await request.read()
        if len(body) % 2:
            return _error(400, "the body must be whole PCM16 samples (an even byte count)")
        text = request.headers.get("X-Transcript") or self.profile.stt.transcript or \
            seconds_text(len(body) // 2, rate)
        p = self.profile.stt
        fault, seed = self._dice["stt"].roll()
        stt = FakeSTT(lambda _audio: text, Latency(
            first_s=p.final_s, jitter_s=p.jitter_s, fail=fault, seed=seed), Timeline(self.clock))
        try:
            transcript = await stt._transcribe(np.frombuffer(body, dtype="<i2"))
        except ConnectionResetError:
            _cut(request)
            return web.Response(status=500)  # not sent: the connection is gone
        return web.json_response({"text": transcript})

    async def stt_stream(self, request: web.Request) -> web.StreamResponse:
        rate = sample_rate(request)
        if rate is None:
            return _error(400, f"sample_rate must be an integer between {MIN_RATE} and "
                               f"{MAX_RATE}")
        ws = web.WebSocketResponse()
        if not ws.can_prepare(request).ok:
            return _error(400, "GET /v1/stt/stream is a WebSocket: send an upgrade request")
        text = request.headers.get("X-Transcript") or request.query.get("transcript") or \
            self.profile.stt.transcript
        await ws.prepare(request)
        fault, seed = self._dice["stt"].roll()
        await StreamSession(ws, self.profile.stt, rate, text, self.clock, fault, seed).run(
            request)
        return ws

    async def tts(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        text = body.get("text")
        if not isinstance(text, str):
            return _error(400, "\"text\" must be a string")
        p = self.profile.tts
        rate = body.get("sample_rate", p.sample_rate)
        if not isinstance(rate, int) or not 8_000 <= rate <= 48_000:
            return _error(400, "\"sample_rate\" must be an integer between 8000 and 48000")
        fault, seed = self._dice["tts"].roll()
        chunks = math.ceil(len(text.split()) * p.seconds_per_word / p.chunk_s)
        tts = FakeTTS(
            Latency(first_s=p.ttfb_s, jitter_s=p.jitter_s, fail=fault, seed=seed,
                    fail_after=max(1, chunks // 2)),
            rtf=p.rtf, seconds_per_word=p.seconds_per_word, chunk_s=p.chunk_s,
            sample_rate=rate, clock=Timeline(self.clock))
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "X-Sample-Rate": str(rate)})
        return await _relay(request, resp, tts._synthesize(text), _pcm_bytes)


async def _relay(request: web.Request, resp: web.StreamResponse, items: AsyncIterator[T],
                 encode: Callable[[T], bytes], trailer: bytes = b"") -> web.StreamResponse:
    """Stream ``items`` as the body of ``resp``. Headers go out with the first item, so a fake
    that hangs sends nothing; a fake that drops (``ConnectionResetError``) cuts the connection."""
    async with contextlib.aclosing(items):  # type: ignore[type-var]
        while True:
            try:
                item = await anext(items)
            except StopAsyncIteration:
                break
            except ConnectionResetError:
                log.debug("dropping %s midway, as the profile asks", request.path)
                _cut(request)
                return resp
            if not resp.prepared:
                await resp.prepare(request)
            await resp.write(encode(item))
    if not resp.prepared:
        await resp.prepare(request)
    if trailer:
        await resp.write(trailer)
    await resp.write_eof()
    return resp


def _pcm_bytes(chunk: PCM) -> bytes:
    return chunk.astype("<i2", copy=False).tobytes()


def _cut(request: web.Request) -> None:
    """Close the connection without finishing the response (the client sees a broken stream)."""
    if request.transport is not None:
        request.transport.close()


def _scripted_call(calls: list[tuple[str, str] | None], messages: list[Any],
                   tools: object) -> tuple[str, str] | None:
    """The profile's next tool call for this request, if it ends with the caller's words and
    offers the tool: the entry after the latest call in its history (the first when there is
    none; null or the end of the list: none). Read from the history, not counted, so a
    history cut short or a caller turn heard in two pieces does not skip an entry."""
    last = messages[-1] if messages else None
    if not calls or not isinstance(tools, list) or not isinstance(last, dict) \
            or last.get("role") != "user":
        return None
    made = [(c.get("function") or {}) for m in messages if isinstance(m, dict)
            for c in (m.get("tool_calls") or []) if isinstance(c, dict)]
    following = 0
    if made:
        done = (made[-1].get("name"), _canonical(str(made[-1].get("arguments") or "{}")))
        filled = [None if c is None else (c[0], _canonical(_fill(c[1], messages)))
                  for c in calls]
        following = next((i + 1 for i in range(len(filled) - 1, -1, -1)
                          if filled[i] == done), 0)
    call = calls[following] if following < len(calls) else None
    offered = {t.get("function", {}).get("name") for t in tools if isinstance(t, dict)}
    if call is None or call[0] not in offered:
        return None
    return call[0], _fill(call[1], messages)


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except ValueError:
        return arguments


def _fill(arguments: str, messages: list[Any]) -> str:
    return _PLACEHOLDER.sub(lambda m: _earlier_result(messages, m[1]), arguments)


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _earlier_result(messages: list[Any], key: str) -> str:
    """``key``'s value in the latest tool result that has it ("" if none): so a scripted
    call can name what an earlier call returned (``"{reference}"``)."""
    for m in reversed(messages):
        if not isinstance(m, dict) or m.get("role") != "tool":
            continue
        try:
            result = json.loads(str(m.get("content") or ""))
        except ValueError:
            continue
        for item in result if isinstance(result, list) else [result]:
            if isinstance(item, dict) and isinstance(item.get(key), str | int | float):
                return json.dumps(item[key])[1:-1] if isinstance(item[key], str) \
                    else str(item[key])
    return ""


def _chat_messages(raw: list[Any]) -> list[ChatMessage]:
    return [ChatMessage(m["role"], str(m.get("content") or ""))
            for m in raw if isinstance(m, dict) and m.get("role") in ROLES]


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error"}},
                             status=status)


async def serve(profile: Profile, host: str = "127.0.0.1", port: int = 0,
                ready: Callable[[str], None] | None = None) -> None:
    """Serve ``profile`` until SIGINT/SIGTERM (or cancellation). ``ready`` gets the base URL."""
    runner = web.AppRunner(CloudSim(profile).app(), access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"http://{_url_host(bound_host)}:{bound_port}"
        log.info("serving profile %s", profile)
        if ready is not None:
            ready(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # not on Windows' loop
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rejoinder cloudsim",
        description="Simulated cloud STT, LLM and TTS services with known latency.")
    parser.add_argument("--profile", default="cloud-typical",
                        help="a shipped profile (cloud-typical, fast) or a TOML file")
    parser.add_argument("--host", default="127.0.0.1", help="bind address")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    overrides = parser.add_argument_group("profile overrides")
    for flag in override_flags().values():
        metavar = {float: "X", int: "N"}.get(flag.kind, "TEXT")
        overrides.add_argument(flag.flag, dest=flag.dest, type=flag.kind, default=None,
                               metavar=metavar, help=flag.help)
    return parser


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The profile named by ``--profile`` with every override flag given applied."""
    changes = {flag.field: getattr(args, flag.dest) for flag in override_flags().values()
               if getattr(args, flag.dest, None) is not None}
    return load_profile(args.profile).with_overrides(changes)


def main(argv: list[str] | None = None) -> int:
    """``python -m rejoinder.cloudsim``: prints ``cloudsim listening on URL`` once ready."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="cloudsim %(levelname)s %(name)s: %(message)s")
    try:
        profile = profile_from_args(args)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2

    def announce(url: str) -> None:
        print(f"cloudsim listening on {url}", flush=True)

    try:
        asyncio.run(serve(profile, args.host, args.port, announce))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        log.error("cannot serve on %s:%s: %s", args.host, args.port, exc)
        return 1
    return 0
