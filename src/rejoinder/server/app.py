"""The HTTP server (aiohttp): the web page, WebRTC signaling, and call records.

aiohttp rather than FastAPI + uvicorn: aiortc is asyncio-native and needs nothing
from ASGI, and aiohttp is both the server and the HTTP client the OpenAI-compatible
LLM provider streams with, so one dependency does both jobs.

    GET  /                  the call page
    POST /api/offer         {"sdp", "type": "offer"} -> {"sdp", "type": "answer", "call_id"}
    GET  /api/calls/{id}    the turn records of a live or recently ended call
    GET  /api/health        {status, calls, max_calls, end_silence_s, pause_s, speculate,
                             turn_model, phrase_cache: {hits, misses, hit_rate, entries}}

Errors are JSON ``{"error": message}``: 400 for a bad offer, 503 when the server
already carries ``server.max_calls`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from importlib import resources
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from rejoinder.config import Config
from rejoinder.core.errors import OverloadedError, SignalingError
from rejoinder.providers.base import Stack
from rejoinder.server.call import Call
from rejoinder.store import CallLog, Recorder, open_recorder

log = logging.getLogger(__name__)

_WEB = resources.files("rejoinder") / "web"
_MAX_OFFER_BYTES = 256 * 1024
_ENDED_KEPT = 100


class Server:
    """Owns the calls. One instance per process; the stack is shared by all calls."""

    def __init__(self, config: Config, stack: Stack, recorder: Recorder | None = None) -> None:
        self.config = config
        self.stack = stack
        self.calls: dict[str, Call] = {}
        self.recorder = recorder  # call records (rejoinder.store); None: kept in memory
        self.call_logs: dict[str, CallLog] = {}
        self._stopping = False
        self.ended: OrderedDict[str, list[dict[str, object]]] = OrderedDict()

    def media_addresses(self) -> list[str]:
        s = self.config.server
        if s.media_addresses:
            return list(s.media_addresses)
        if s.host in ("127.0.0.1", "localhost"):
            return ["127.0.0.1"]
        return []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_OFFER_BYTES)
        app.router.add_get("/", self.index)
        app.router.add_get("/app.js", self.static)
        app.router.add_post("/api/offer", self.offer)
        app.router.add_get("/api/calls/{call_id}", self.call_record)
        app.router.add_delete("/api/calls/{call_id}", self.delete_call_record)
        app.router.add_get("/api/health", self.health)
        app.on_shutdown.append(self._shutdown)
        return app

    # -- handlers -------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=(_WEB / "index.html").read_text(), content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        return web.Response(text=(_WEB / "app.js").read_text(),
                            content_type="application/javascript")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "calls": len(self.calls),
                                  "max_calls": self.config.server.max_calls,
                                  "end_silence_s": self.config.turn.end_silence_s,
                                  "pause_s": self.config.turn.pause_s,
                                  "speculate": self.config.turn.speculate,
                                  "turn_model": self.config.turn.model,
                                  **self._stack_stats()})

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
        return web.json_response({**record, "active": call_id in self.calls})

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
        log.info("call %s record deleted on request", call_id)
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
        return _error(404, f"no call {call_id!r}")

    async def offer(self, request: web.Request) -> web.Response:
        try:
            sdp = _parse_offer(await _read_json(request))
            if len(self.calls) >= self.config.server.max_calls:
                raise OverloadedError(
                    f"server is at capacity ({self.config.server.max_calls} concurrent calls);"
                    " try again later")
        except SignalingError as exc:
            log.info("offer refused: %s", exc)
            return _error(400, str(exc))
        except OverloadedError as exc:
            log.warning("offer refused: %s", exc)
            return _error(503, str(exc))
        call = Call(self.config, self.stack, self._forget)
        self.calls[call.id] = call
        if self.recorder is not None:
            record = self.recorder.call(call.id, transport="webrtc",
                                        agent=self.config.agent.name)
            self.call_logs[call.id] = record
            call.observers.append(record.on_event)
        try:
            answer = await call.answer(sdp, self.media_addresses())
        except SignalingError as exc:
            log.info("offer refused: %s", exc)
            await call.close()
            return _error(400, str(exc))
        except BaseException:
            await asyncio.shield(call.close())
            raise
        log.info("call %s answered", call.id)
        if call.id in self.call_logs:
            self.call_logs[call.id].begin()
        return web.json_response({"sdp": answer.sdp, "type": answer.type, "call_id": call.id})

    # -- lifecycle ------------------------------------------------------------------------
    def _forget(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        if (record := self.call_logs.pop(call.id, None)) is not None:
            record.end("server_stopped" if self._stopping else
                       "failed" if call.pc.connectionState == "failed" else "ended")
        self.ended[call.id] = call.conversation.traces
        while len(self.ended) > _ENDED_KEPT:
            self.ended.popitem(last=False)

    async def _shutdown(self, app: web.Application) -> None:
        self._stopping = True
        await asyncio.gather(*(c.close() for c in list(self.calls.values())))


async def _read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise SignalingError(f"offer larger than {_MAX_OFFER_BYTES} bytes") from None
    except ValueError:
        raise SignalingError('body must be JSON: {"sdp": "...", "type": "offer"}') from None


def _parse_offer(body: Any) -> str:
    if not isinstance(body, dict):
        raise SignalingError('body must be a JSON object: {"sdp": "...", "type": "offer"}')
    if body.get("type") != "offer":
        raise SignalingError(f'"type" must be "offer", got {body.get("type")!r}')
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise SignalingError('"sdp" must be a non-empty string')
    if not sdp.lstrip().startswith("v=0"):
        raise SignalingError('"sdp" is not an SDP session description (must start with v=0)')
    return sdp


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def run_server(config: Config, stack: Stack, *, ready: asyncio.Event | None = None,
                     bound: list[int] | None = None) -> None:
    """Serve until cancelled. ``bound`` receives the actual port (useful with port 0)."""
    recorder = await open_recorder(config.store)
    server = Server(config, stack, recorder)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []  # noqa: SLF001
    port = sockets[0].getsockname()[1] if sockets else config.server.port
    if bound is not None:
        bound.append(port)
    log.info("serving on http://%s:%d", config.server.host, port)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await recorder.close()
