"""A worker: the calls themselves, dispatched to it by a gateway over NATS.

It is a single-process server (:class:`rejoinder.server.app.Server`) on its own HTTP port
(Twilio media streams come straight to it) that also

- answers offers the gateway forwards (``rejoinder.offer.<id>``, and the ``workers`` queue
  group on ``rejoinder.offer``): aiortc on this machine answers, so the answer's ICE host
  candidates are this worker's addresses and media flows between caller and worker;
- issues the one-time token of a phone call's stream (``rejoinder.phone.<id>``);
- publishes its load every ``bus.heartbeat_s``;
- sends its call records to JetStream instead of a database (:class:`.bus.BusSink`), so
  what a call completed is on the NATS server's disk within milliseconds, whatever
  becomes of this process.

SIGTERM drains (:mod:`rejoinder.server.drain`, as a single-process server does): no new
calls, live calls go on for ``server.drain_s``, then the agent says
``server.drain_goodbye`` in each and ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from typing import Any

from aiohttp import web

from rejoinder.cluster.bus import OFFER, PHONE, QUEUE, BusSink, connect, ensure_stream
from rejoinder.cluster.dispatch import Heartbeat
from rejoinder.config import Config
from rejoinder.core.clock import Clock
from rejoinder.core.errors import OverloadedError, SignalingError
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.observability.logs import call_id_var
from rejoinder.providers.base import Stack
from rejoinder.server.app import Server
from rejoinder.server.drain import drain
from rejoinder.server.guard import parse_offer
from rejoinder.server.telephony import MEDIA_PATH, log_state
from rejoinder.store import Recorder

log = logging.getLogger(__name__)

class Worker:
    """One worker: its server, its NATS subscriptions and heartbeat."""

    def __init__(self, config: Config, stack: Stack, worker_id: str, nc: Any, js: Any,
                 clock: Clock | None = None) -> None:
        self.id = worker_id
        self.nc = nc
        self.clock = clock or Clock()
        self.recorder = Recorder(BusSink(js, worker_id), queue_max=config.store.queue_max,
                                 keep_days=0.0, redact_text=config.store.redact)
        self.config = config
        self.server = Server(config, stack, self.recorder, analytics=None)
        self.url = ""
        self._handlers: set[asyncio.Task[None]] = set()
        self._subs: list[Any] = []

    def heartbeat(self) -> Heartbeat:
        s = self.server
        return Heartbeat(self.id, len(s.calls), self.config.server.max_calls, self.url,
                         os.getpid(), s.draining)

    async def start(self, url: str) -> None:
        self.url = url
        self.recorder.start()
        subject = f"{OFFER}.{self.id}"
        self._subs = [await self.nc.subscribe(subject, cb=self._spawn(self._offer)),
                      await self.nc.subscribe(OFFER, queue=QUEUE, cb=self._spawn(self._offer)),
                      await self.nc.subscribe(f"{PHONE}.{self.id}",
                                              cb=self._spawn(self._phone))]

    def _spawn(self, handler: Any) -> Any:
        """Each request in a task of its own: one caller's ICE gathering does not hold
        the next caller's answer."""
        async def cb(msg: Any) -> None:
            task = asyncio.create_task(handler(msg))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        return cb

    async def beat(self) -> None:
        """Publish the load every ``heartbeat_s`` until cancelled."""
        every = self.config.bus.heartbeat_s
        while True:
            with contextlib.suppress(Exception):  # NATS away: the next beat tries again
                await self.nc.publish("rejoinder.heartbeat", self.heartbeat().encode())
            await self.clock.sleep(every)

    async def _offer(self, msg: Any) -> None:
        token = call_id_var.set("-")
        try:
            try:
                body = json.loads(msg.data)
                reply: dict[str, object] = dict(await self.server.answer_offer(
                    parse_offer(body)))
                reply["worker"] = self.id
            except OverloadedError as exc:
                reply = {"error": str(exc), "code": exc.code, "status": 503}
            except SignalingError as exc:
                reply = {"error": exc.message, "code": exc.code, "status": exc.status}
            except ValueError:
                reply = {"error": "the body must be JSON", "code": "bad_json", "status": 400}
            except Exception:
                log.exception("offer from the gateway failed")
                reply = {"error": "internal server error", "code": "internal", "status": 500}
            await msg.respond(json.dumps(reply).encode())
        finally:
            call_id_var.reset(token)

    async def _phone(self, msg: Any) -> None:
        s = self.server
        if s.draining or len(s.calls) >= self.config.server.max_calls:
            reply: dict[str, object] = {"code": "at_capacity", "status": 503}
        else:
            try:
                call_sid = str(json.loads(msg.data).get("call_sid", ""))
            except (ValueError, AttributeError):
                call_sid = ""
            token = s.phone._issue(call_sid)
            reply = {"token": token, "stream_url": _ws(self.url) + MEDIA_PATH,
                     "worker": self.id}
        await msg.respond(json.dumps(reply).encode())

    async def stop_admitting(self) -> None:
        self.server.draining = True
        for sub in self._subs:  # offers go to other workers from now on
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self.nc.publish("rejoinder.heartbeat", self.heartbeat().encode())

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in list(self.server.calls.values())))
        for task in list(self._handlers):
            task.cancel()
        await self.recorder.close()


def _ws(url: str) -> str:
    return "wss://" + url[len("https://"):] if url.startswith("https://") \
        else "ws://" + url[len("http://"):]


async def run_worker(config: Config, stack: Stack, worker_id: str,
                     stop: asyncio.Event | None = None) -> None:
    """Serve as worker ``worker_id`` until ``stop`` is set (then drain) or cancelled."""
    if not config.bus.url:
        raise SignalingError("no_bus", "a worker needs bus.url (REJOINDER_BUS__URL)")
    nc = await connect(config.bus.url, f"rejoinder-worker-{worker_id}")
    runner: web.AppRunner | None = None
    worker: Worker | None = None
    beat: asyncio.Task[None] | None = None
    try:
        js = await ensure_stream(nc)
        s = config.server
        worker = Worker(config, stack, worker_id, nc, js)
        runner = web.AppRunner(worker.server.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, s.host, s.port)
        await site.start()
        port = int(runner.addresses[0][1]) if runner.addresses else s.port
        url = config.bus.worker_url or f"http://{s.host}:{port}"
        if not config.telephony.public_url and config.telephony.enabled:
            # Twilio signs the stream URL the TwiML names: this worker's own.
            worker.server.phone.options = dataclasses.replace(config.telephony,
                                                              public_url=url)
        await worker.start(url.rstrip("/"))
        beat = asyncio.create_task(worker.beat(), name="heartbeat")
        log.info("worker %s serving on %s", worker_id, url)
        log_state(config.telephony)
        await (stop or asyncio.Event()).wait()
        await worker.stop_admitting()
        await drain(worker.server, s.drain_s, s.drain_goodbye)
    finally:
        await cancel_and_wait(beat, what="heartbeat")
        if worker is not None:
            await worker.close()
        if runner is not None:
            await runner.cleanup()
        with contextlib.suppress(Exception):
            await nc.close()
