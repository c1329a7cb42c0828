"""The HTTP server (aiohttp): the web page, WebRTC signaling, and call records.

aiohttp rather than FastAPI + uvicorn: aiortc is asyncio-native and needs nothing
from ASGI, and aiohttp is both the server and the HTTP client the OpenAI-compatible
LLM provider streams with, so one dependency does both jobs.

    GET  /                  the call page
    POST /api/offer         {"sdp", "type": "offer"} -> {"sdp", "type": "answer", "call_id"}
    GET  /api/calls/{id}    the turn records of a live or recently ended call
    GET  /api/health        {status ("ok" | "draining"), calls, max_calls, end_silence_s,
                             pause_s, speculate,
                             turn_model, phrase_cache: {hits, misses, hit_rate, entries}}
    GET  /metrics           Prometheus text format (rejoinder.observability.metrics)

Errors are JSON ``{"error": message, "code": code}``: a short, stable message and a
code (README, "Signaling API"); the detail goes to the log with the call id. Every
request passes the checks of :mod:`rejoinder.server.guard` (Host; Origin and content
type where it changes state) before its handler runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from rejoinder.analytics.jobs import AnalyticsJobs, api_view
from rejoinder.analytics.worker import AnalyticsWorker, open_analytics
from rejoinder.config import Config
from rejoinder.core.errors import OverloadedError, SignalingError
from rejoinder.observability.hub import Observability
from rejoinder.observability.logs import call_id_var
from rejoinder.observability.metrics import CONTENT_TYPE_LATEST
from rejoinder.providers.base import Stack
from rejoinder.server.call import Call
from rejoinder.server.drain import drain
from rejoinder.server.guard import (
    MAX_BODY_BYTES,
    check_content_type,
    check_host,
    check_origin,
    parse_offer,
    read_json,
)
from rejoinder.server.operator import register as register_operator
from rejoinder.server.telephony import PhoneLine, log_state
from rejoinder.store import CallLog, Recorder, open_recorder
from rejoinder.transports.webrtc import WebRTCTransport

log = logging.getLogger(__name__)

_WEB = resources.files("rejoinder") / "web"
_ENDED_KEPT = 100
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# aiohttp's own refusals (unknown path, wrong method, ...) as codes, in the same shape.
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "unsupported_media_type"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """Owns the calls. One instance per process; the stack is shared by all calls."""

    def __init__(self, config: Config, stack: Stack, recorder: Recorder | None = None,
                 analytics: AnalyticsWorker | None = None) -> None:
        self.config = config
        self.stack = stack
        self.calls: dict[str, Call] = {}
        self.recorder = recorder  # call records (rejoinder.store); None: kept in memory
        self.analytics = analytics  # post-call analytics jobs; None: off
        self.call_logs: dict[str, CallLog] = {}
        self._stopping = False
        self.draining = False  # set by a graceful drain: no new calls (server.drain)
        self.ended: OrderedDict[str, list[dict[str, object]]] = OrderedDict()
        self.observability = Observability(config, stack, active_calls=lambda: len(self.calls),
                                           recorder=recorder)
        self.phone = PhoneLine(self)  # /twilio/voice, /twilio/media

    def media_addresses(self) -> list[str]:
        s = self.config.server
        if s.media_addresses:
            return list(s.media_addresses)
        if s.host in ("127.0.0.1", "localhost"):
            return ["127.0.0.1"]
        return []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._guard])
        app.router.add_get("/", self.index)
        app.router.add_get("/app.js", self.static)
        app.router.add_post("/api/offer", self.offer)
        app.router.add_get("/api/calls/{call_id}", self.call_record)
        app.router.add_delete("/api/calls/{call_id}", self.delete_call_record)
        app.router.add_get("/api/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        self.phone.add_routes(app)
        app.on_shutdown.append(self._shutdown)
        self.operator = register_operator(app, self)  # access control, the dashboard
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Host and Origin checks before any handler; every refusal and failure as a JSON
        error with a code, never a traceback or a library's message."""
        options = self.config.server
        token = call_id_var.set("-")  # one connection serves several requests
        try:
            if not self.phone.called_by_public_name(request):
                check_host(request, options.host, options.allowed_hosts)
            if request.method not in _SAFE_METHODS:
                check_origin(request, options.allowed_origins)
            return await handler(request)
        except SignalingError as exc:
            log.info("%s %s refused (%s): %s%s", request.method, request.path, exc.code,
                     exc.message, f"; {exc.detail}" if exc.detail else "")
            return _error(exc.status, exc.code, exc.message)
        except OverloadedError as exc:
            log.warning("%s %s refused (%s): %s", request.method, request.path, exc.code, exc)
            return _error(503, exc.code, str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status, "http_error")
            log.info("%s %s refused (%s)", request.method, request.path, code)
            return _error(exc.status, code, exc.reason)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return _error(500, "internal", "internal server error")
        finally:
            call_id_var.reset(token)

    # -- handlers -------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=(_WEB / "index.html").read_text(), content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        return web.Response(text=(_WEB / "app.js").read_text(),
                            content_type="application/javascript")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "draining" if self.draining else "ok",
                                  "calls": len(self.calls),
                                  "max_calls": self.config.server.max_calls,
                                  "end_silence_s": self.config.turn.end_silence_s,
                                  "pause_s": self.config.turn.pause_s,
                                  "speculate": self.config.turn.speculate,
                                  "turn_model": self.config.turn.model,
                                  **self._stack_stats()})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.observability.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _stack_stats(self) -> dict[str, object]:
        stats = getattr(self.stack.tts, "stats", None)
        return {"phrase_cache": stats()} if stats is not None else {}

    async def _stored_record(self, call_id: str) -> web.Response:
        assert self.recorder is not None
        with contextlib.suppress(TimeoutError):  # the turns that just ended, if it is quick
            await asyncio.wait_for(asyncio.shield(self.recorder.flush()), 0.5)
        try:
            record = await self.recorder.store.get_call(call_id)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("call store unavailable: %s", type(exc).__name__)
            return web.json_response({"error": "the call store is unavailable",
                                      "code": "store_unavailable"}, status=503)
        if record is None:
            return web.json_response({"error": "no such call", "code": "not_found"},
                                     status=404)
        try:
            job = await AnalyticsJobs(self.recorder.store).get(call_id)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("call store unavailable: %s", type(exc).__name__)
            job = {"status": "unavailable"}
        return web.json_response({**record, "active": call_id in self.calls, **api_view(job)})

    async def delete_call_record(self, request: web.Request) -> web.Response:
        """Delete one call's record (personal data); a live call is recorded no further."""
        call_id = request.match_info["call_id"]
        self.ended.pop(call_id, None)
        live = self.call_logs.pop(call_id, None) is not None
        if self.recorder is None:
            return web.json_response({"error": "no such call", "code": "not_found"},
                                     status=404)
        if live:
            self.recorder.forget(call_id)
        try:
            deleted = await self.recorder.store.delete_call(call_id)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("call store unavailable: %s", type(exc).__name__)
            return web.json_response({"error": "the call store is unavailable",
                                      "code": "store_unavailable"}, status=503)
        if not (deleted or live):
            return web.json_response({"error": "no such call", "code": "not_found"},
                                     status=404)
        self.recorder.forget(call_id)  # and whatever of it is still queued
        log.info("call record deleted on request", extra={"call_id": call_id})
        return web.json_response({"call_id": call_id, "deleted": True})

    async def call_record(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        if self.recorder is not None:
            return await self._stored_record(call_id)
        if call_id in self.calls:
            return web.json_response({"call_id": call_id, "active": True,
                                      "turns": self.calls[call_id].conversation.traces})
        if call_id in self.ended:
            return web.json_response({"call_id": call_id, "active": False,
                                      "turns": self.ended[call_id]})
        raise SignalingError("not_found", "no such call", status=404)

    async def offer(self, request: web.Request) -> web.Response:
        check_content_type(request)
        sdp = parse_offer(await read_json(request))
        return web.json_response(await self.answer_offer(sdp))

    async def answer_offer(self, sdp: str) -> dict[str, str]:
        """Start a call on a checked offer: ``{"sdp", "type", "call_id"}`` (also what a
        worker answers a gateway with, rejoinder.cluster)."""
        limit = self.config.server.max_calls
        if self.draining:
            raise OverloadedError("draining", "server is shutting down; try again later")
        if len(self.calls) >= limit:
            raise OverloadedError(
                "at_capacity",
                f"server is at capacity ({limit} concurrent calls); try again later")
        o = self.config.server
        transport = WebRTCTransport(o.ice_servers, o.ice_username, o.ice_credential,
                                    o.jitter_buffer_frames)
        call = Call(self.config, self.stack, self._forget, transport=transport)
        call_id_var.set(call.id)
        self.calls[call.id] = call
        call.observers.extend(self.observability.attach(call.id, call.conversation.stats))
        if self.recorder is not None:
            record = self.recorder.call(call.id, transport="webrtc",
                                        agent=self.config.agent.name)
            self.call_logs[call.id] = record
            call.observers.append(record.on_event)
            call.conversation.records.append(record.on_event)  # tool arguments
        try:
            # Answering includes ICE gathering; it must not hold the slot for longer
            # than a caller gets to connect.
            async with asyncio.timeout(self.config.server.connect_timeout_s):
                answer = await transport.answer(sdp, self.media_addresses())
            call.watch()
        except TimeoutError:
            await call.close()
            raise OverloadedError("answer_timeout",
                                  "the server could not answer in time; try again") from None
        except BaseException:
            await asyncio.shield(call.close())
            raise
        log.info("call answered")  # call_id_var is this call's
        if call.id in self.call_logs:
            self.call_logs[call.id].begin()
        return {"sdp": answer.sdp, "type": answer.type, "call_id": call.id}

    # -- lifecycle ------------------------------------------------------------------------
    def _forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        self.observability.detach(call.id)
        if (record := self.call_logs.pop(call.id, None)) is not None:
            record.end("server_stopped" if self._stopping else
                       "failed" if call.transport.failed else "ended")
            if self.analytics is not None:  # after the call, never during it
                self.analytics.submit(call.id)
        self.ended[call.id] = call.conversation.traces
        while len(self.ended) > _ENDED_KEPT:
            self.ended.popitem(last=False)

    async def _shutdown(self, app: web.Application) -> None:
        self._stopping = True
        await asyncio.gather(*(c.close() for c in list(self.calls.values())))
        self.observability.close()  # the last spans are exported


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


async def run_server(config: Config, stack: Stack, *, ready: asyncio.Event | None = None,
                     bound: list[int] | None = None, stop: asyncio.Event | None = None) -> None:
    """Serve until cancelled, or until ``stop`` is set: then drain (``server.drain_s``,
    :mod:`rejoinder.server.drain`) and return. ``bound`` receives the actual port (useful
    with port 0)."""
    recorder = await open_recorder(config.store)
    analytics = open_analytics(config, stack, recorder)
    server = Server(config, stack, recorder, analytics)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port)
    await site.start()
    addresses = runner.addresses
    port = int(addresses[0][1]) if addresses else config.server.port
    if bound is not None:
        bound.append(port)
    log.info("serving on http://%s:%d", config.server.host, port)
    log_state(config.telephony)
    if ready is not None:
        ready.set()
    try:
        await (stop or asyncio.Event()).wait()
        await drain(server, config.server.drain_s, config.server.drain_goodbye)
    finally:
        await runner.cleanup()
        if analytics is not None:
            await analytics.close()
        await recorder.close()
