"""The gateway: signaling for every worker, admission across all of them, and the call
store's one writer.

It is a :class:`~rejoinder.server.app.Server` with no calls of its own: the call page,
the operator's routes and the call records are served as in single-process mode, while

- ``POST /api/offer`` goes to the least loaded worker (request-reply on
  ``rejoinder.offer.<id>``; the ``workers`` queue group when no worker has been heard
  from yet), and the worker's answer comes back as it is;
- ``POST /twilio/voice`` asks the chosen worker for a stream token and returns TwiML whose
  stream URL is that worker's own WebSocket;
- a call is refused with 503 only when no worker has room; a worker that stops
  heartbeating is out of rotation after ``bus.stale_s``;
- the records the workers publish to JetStream are written to the store here, in order,
  and acked only after the commit, so a database that is down loses nothing: they wait in
  the stream (on disk) and are written when it is back. A call's end starts its post-call
  analytics here too;
- a worker heard again under a new process id was killed and restarted: the WebRTC calls
  this gateway sent to its old process ended with it, and their end is recorded here
  (outcome ``worker_lost``), as the worker can no longer do it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web
from sqlalchemy.exc import IntegrityError
from twilio.twiml.voice_response import Connect, Stream, VoiceResponse

from rejoinder.analytics.worker import AnalyticsWorker, open_analytics
from rejoinder.cluster.bus import (
    HEARTBEAT,
    OFFER,
    PHONE,
    RECORDS,
    STREAM,
    WRITER,
    connect,
    decode,
    ensure_stream,
    require_nats,
)
from rejoinder.cluster.dispatch import Heartbeat, LoadTable
from rejoinder.config import Config
from rejoinder.core.clock import Clock
from rejoinder.core.errors import OverloadedError, SignalingError
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.providers.base import Stack
from rejoinder.server.app import Server
from rejoinder.server.telephony import FORM_TYPE, PhoneLine, log_state
from rejoinder.store import Recorder, open_recorder
from rejoinder.store.db import CallEnd, Store, Write

log = logging.getLogger(__name__)

_BATCH = 200
_RETRY_FIRST_S = 0.25
_RETRY_MAX_S = 5.0
_PASSED_ON = ("CallSid", "From", "To")


class GatewayServer(Server):
    """Signaling and admission for the workers heard on ``nc``."""

    def __init__(self, config: Config, stack: Stack, nc: Any, recorder: Recorder | None = None,
                 analytics: AnalyticsWorker | None = None, clock: Clock | None = None) -> None:
        super().__init__(config, stack, recorder, analytics)
        self.nc = nc
        self.clock = clock or Clock()
        self.table = LoadTable(config.bus.stale_s)
        self.phone = GatewayPhone(self)
        # Live WebRTC calls sent to a worker: call id -> (worker, its pid; 0 not yet known).
        # An entry goes when the call's end is written, or when its worker restarts.
        self.placed: dict[str, tuple[str, int]] = {}

    def on_heartbeat(self, data: bytes) -> None:
        try:
            beat = Heartbeat.decode(data)
        except ValueError as exc:
            log.warning("a heartbeat that is not one: %s", exc)
            return
        self.table.heard(beat, self.clock.now())
        if beat.pid:
            self._check_restart(beat.worker, beat.pid)

    def _check_restart(self, worker: str, pid: int) -> None:
        lost = []
        for call_id, (on, was) in list(self.placed.items()):
            if on != worker:
                continue
            if not was:
                self.placed[call_id] = (on, pid)
            elif was != pid:
                lost.append(call_id)
        if lost:
            log.warning("worker %s was restarted: %d of its calls ended with its old"
                        " process", worker, len(lost))
        for call_id in lost:
            del self.placed[call_id]
            if self.recorder is not None:
                self.recorder.put(CallEnd(call_id, self.recorder.now(), "worker_lost"))
            if self.analytics is not None:
                self.analytics.submit(call_id)

    def call_ended(self, call_id: str) -> None:
        """A call's end was written (from its worker's records)."""
        self.placed.pop(call_id, None)

    async def answer_offer(self, sdp: str) -> dict[str, str]:
        reply = await self.dispatch(OFFER, {"sdp": sdp, "type": "offer"},
                                    self.config.server.connect_timeout_s + 5.0)
        worker = str(reply.get("worker", ""))
        if worker:
            state = self.table.workers.get(worker)
            self.placed[str(reply["call_id"])] = (worker, state.beat.pid if state else 0)
        return {"sdp": str(reply["sdp"]), "type": str(reply["type"]),
                "call_id": str(reply["call_id"])}

    async def dispatch(self, subject: str, body: dict[str, object],
                       timeout_s: float) -> dict[str, Any]:
        """Ask the least loaded worker with room; the next on a refusal or silence; the
        queue group when none has been heard from. 503 when none takes it."""
        if self.draining:
            raise OverloadedError("draining", "server is shutting down; try again later")
        nats = require_nats()
        payload = json.dumps(body).encode()
        tried: set[str] = set()
        while True:
            ready = [s for s in self.table.candidates(self.clock.now())
                     if s.beat.worker not in tried]
            if not ready:
                break
            worker = ready[0].beat.worker
            tried.add(worker)
            self.table.reserve(worker)
            try:
                msg = await self.nc.request(f"{subject}.{worker}", payload, timeout=timeout_s)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                log.warning("worker %s did not answer; trying another", worker)
                self.table.workers.pop(worker, None)
                continue
            reply: dict[str, Any] = json.loads(msg.data)
            if reply.get("status") == 503:
                self.table.full(worker)
                continue
            return _checked(reply)
        if not tried and subject == OFFER and not self.table.workers:
            # No heartbeat yet (the gateway just started): any worker of the queue group.
            with contextlib.suppress(nats.errors.NoRespondersError, nats.errors.TimeoutError):
                msg = await self.nc.request(subject, payload, timeout=timeout_s)
                reply = json.loads(msg.data)
                if reply.get("status") != 503:
                    return _checked(reply)
        calls, limit = self.table.totals(self.clock.now())
        raise OverloadedError("at_capacity", f"every worker is at capacity ({calls} of"
                              f" {limit} calls); try again later")

    async def health(self, request: web.Request) -> web.Response:
        now = self.clock.now()
        live = sorted(self.table.live(now), key=lambda s: s.beat.worker)
        calls, limit = self.table.totals(now)
        return web.json_response({
            "status": "draining" if self.draining else "ok", "role": "gateway",
            "calls": calls, "max_calls": limit,
            "workers": [{"worker": s.beat.worker, "calls": s.beat.calls,
                         "max_calls": s.beat.max_calls, "url": s.beat.url, "pid": s.beat.pid,
                         "draining": s.beat.draining,
                         "heard_s_ago": round(now - s.seen_at, 3)} for s in live],
            "end_silence_s": self.config.turn.end_silence_s,
            "pause_s": self.config.turn.pause_s, "speculate": self.config.turn.speculate,
            "turn_model": self.config.turn.model})


def _checked(reply: dict[str, Any]) -> dict[str, Any]:
    """A worker's answer, or its refusal raised as the same error."""
    if "error" in reply or "code" in reply and "token" not in reply:
        status = int(reply.get("status", 500))
        code, message = str(reply.get("code", "internal")), str(reply.get("error", ""))
        if status == 503:
            raise OverloadedError(code, message)
        raise SignalingError(code, message or "refused", status=status)
    return reply


class GatewayPhone(PhoneLine):
    """The Twilio webhook answered for a worker; streams go to the worker itself."""

    server: GatewayServer

    async def voice(self, request: web.Request) -> web.Response:
        self._check_on()
        if request.content_type != FORM_TYPE:
            raise SignalingError("unsupported_media_type", f"the body must be {FORM_TYPE}",
                                 status=415)
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise SignalingError("too_large", "the body is too large", status=413) from None
        except (ValueError, LookupError) as exc:
            raise SignalingError("bad_form", "the body is not a readable form",
                                 detail=type(exc).__name__) from None
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        self._check_signature(request, self._public(request, "/twilio/voice"), params)
        response = VoiceResponse()
        try:
            issued = await self.server.dispatch(PHONE, {"call_sid": params.get("CallSid", "")},
                                                5.0)
        except OverloadedError:
            log.warning("phone call refused: every worker is at capacity")
            response.reject(reason="busy")
            return _twiml(response)
        stream = Stream(url=str(issued["stream_url"]))
        stream.parameter(name="token", value=str(issued["token"]))
        for name in _PASSED_ON:
            if params.get(name):
                stream.parameter(name=name, value=params[name][:64])
        connect_ = Connect()
        connect_.append(stream)
        response.append(connect_)
        log.info("phone call sent to worker %s", issued.get("worker"))
        return _twiml(response)

    async def media(self, request: web.Request) -> web.StreamResponse:
        raise SignalingError("not_found", "media streams go to the worker the TwiML names",
                             status=404)


def _twiml(response: VoiceResponse) -> web.Response:
    return web.Response(text=str(response.to_xml()), content_type="text/xml")


# -- the store's writer ------------------------------------------------------------------
async def write_records(js: Any, store: Store, on_end: Any = None,
                        clock: Clock | None = None) -> None:
    """Consume the records stream until cancelled: each batch written in one go, in
    order, and acked after the commit. A failing database is retried with a growing
    pause while the batch's messages are kept from redelivery (``in_progress``)."""
    clock = clock or Clock()
    psub: Any = None
    wait_s, away = _RETRY_FIRST_S, False
    while True:
        # Nothing that NATS raises ends the writer: a writer that stopped would leave
        # every record of every call in the stream, unwritten, for the rest of the run.
        try:
            if psub is None:
                psub = await js.pull_subscribe(f"{RECORDS}.>", durable=WRITER,
                                               stream=STREAM)
            msgs = await psub.fetch(_BATCH, timeout=1.0)
        except TimeoutError:  # nothing to write (nats-py raises its own and the builtin)
            continue
        except Exception as exc:
            if not away:
                log.warning("call store: cannot read the records stream (%s); retrying",
                            type(exc).__name__)
            away = True
            await clock.sleep(wait_s)
            wait_s = min(wait_s * 2, _RETRY_MAX_S)
            continue
        if away:
            log.info("call store: reading the records stream again")
        wait_s, away = _RETRY_FIRST_S, False
        items: list[Write] = []
        for msg in msgs:
            try:
                items.append(decode(msg.data))
            except ValueError as exc:
                log.warning("call store: a message on %s is not a record (%s); dropped",
                            msg.subject, exc)
        pause, failing = _RETRY_FIRST_S, False
        while True:
            try:
                await _write(store, items)
                break
            except Exception as exc:
                if not failing:
                    log.warning("call store: write failed (%s); %d records wait in the "
                                "stream, retrying", type(exc).__name__, len(msgs))
                failing = True
                for msg in msgs:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
                await clock.sleep(pause)
                pause = min(pause * 2, _RETRY_MAX_S)
        if failing:
            log.info("call store: writing again")
        for msg in msgs:
            try:
                await msg.ack()
            except Exception as exc:  # written: redelivered after ack_wait at worst
                log.warning("call store: ack failed (%s)", type(exc).__name__)
        if on_end is not None:
            for item in items:
                if isinstance(item, CallEnd):
                    on_end(item.call_id)


async def _write(store: Store, batch: list[Write]) -> None:
    try:
        await store.write(batch)
    except IntegrityError:  # one that can never be written (its call deleted): skip it
        for item in batch:
            try:
                await store.write([item])
            except IntegrityError:
                log.warning("call store: a %s record cannot be written; skipped",
                            type(item).__name__)


async def pending_records(js: Any) -> int:
    """Records in the stream not yet acked by the writer."""
    try:
        info = await js.consumer_info(STREAM, WRITER)
    except Exception:
        return 0
    return int(info.num_pending) + int(info.num_ack_pending)


async def run_gateway(config: Config, stack: Stack, *, stop: asyncio.Event | None = None,
                      bound: list[int] | None = None,
                      workers_gone: asyncio.Event | None = None) -> None:
    """Serve as the gateway until ``stop`` is set (or cancelled). After ``stop`` it
    admits no call; once ``workers_gone`` is set (if given) it writes what is left in the
    stream (at most 10 s) and exits."""
    if not config.bus.url:
        raise SignalingError("no_bus", "a gateway needs bus.url (REJOINDER_BUS__URL)")
    recorder = await open_recorder(config.store)
    analytics = open_analytics(config, stack, recorder)
    nc = await connect(config.bus.url, "rejoinder-gateway")
    runner: web.AppRunner | None = None
    writer: asyncio.Task[None] | None = None
    try:
        js = await ensure_stream(nc)
        server = GatewayServer(config, stack, nc, recorder, analytics)
        await nc.subscribe(HEARTBEAT, cb=_on_beat(server))
        def ended(call_id: str) -> None:
            server.call_ended(call_id)
            if analytics is not None:
                analytics.submit(call_id)
        writer = asyncio.create_task(write_records(js, recorder.store, ended),
                                     name="store-writer")
        writer.add_done_callback(_writer_ended)
        runner = web.AppRunner(server.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, config.server.host, config.server.port)
        await site.start()
        port = int(runner.addresses[0][1]) if runner.addresses else config.server.port
        if bound is not None:
            bound.append(port)
        log.info("gateway serving on http://%s:%d", config.server.host, port)
        log_state(config.telephony)
        await (stop or asyncio.Event()).wait()
        server.draining = True
        if workers_gone is not None:
            await workers_gone.wait()
            for _ in range(100):
                if not await pending_records(js):
                    break
                await asyncio.sleep(0.1)
    finally:
        await cancel_and_wait(writer, what="store writer")
        if runner is not None:
            await runner.cleanup()
        with contextlib.suppress(Exception):
            await nc.close()
        if analytics is not None:
            await analytics.close()
        await recorder.close()


def _writer_ended(task: asyncio.Task[None]) -> None:
    """The writer only ends when cancelled; anything else is said out loud."""
    if not task.cancelled() and task.exception() is not None:
        log.error("call store: the records writer stopped (%r); records stay in the stream"
                  " until the gateway restarts", task.exception())


def _on_beat(server: GatewayServer) -> Any:
    async def cb(msg: Any) -> None:
        server.on_heartbeat(msg.data)
    return cb
