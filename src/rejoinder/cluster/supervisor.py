"""``rejoinder serve --workers N`` on one machine: a local nats-server (unless ``bus.url``
names one), N worker processes, and the gateway in this process.

The supervisor restarts a worker that exits while the server runs (with the same id and
port, after a pause that grows while it keeps dying: 0.5 s doubling to 10 s). SIGTERM
drains: the gateway admits no more calls, every worker gets SIGTERM and drains its own
(``server.drain_s``, then a goodbye), the records they sent are written, and the
nats-server stops last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from rejoinder.cluster.bus import LocalNats, die_with_parent, free_port
from rejoinder.config import Config
from rejoinder.core.clock import Clock
from rejoinder.core.tasks import cancel_and_wait
from rejoinder.store.db import default_sqlite_path

log = logging.getLogger(__name__)

_RESTART_FIRST_S = 0.5
_RESTART_MAX_S = 10.0
_HEALTHY_S = 30.0  # a worker up this long has its restart pause reset
_STOP_MARGIN_S = 15.0  # past drain_s, for the goodbyes and the exit


def jetstream_dir(config: Config) -> Path:
    """Where a local nats-server keeps JetStream: ``bus.jetstream_dir``, or next to the
    SQLite call store (the data directory)."""
    if config.bus.jetstream_dir:
        return Path(config.bus.jetstream_dir).expanduser()
    store = config.store
    db = Path(store.path).expanduser() if store.path and not store.url else \
        default_sqlite_path()
    return db.parent / "jetstream"


@dataclasses.dataclass
class WorkerProcess:
    id: str
    port: int
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    pause_s: float = _RESTART_FIRST_S
    restarts: int = 0


class Supervisor:
    """Starts, watches and stops the worker processes."""

    def __init__(self, command: Sequence[str], count: int, env: dict[str, str], host: str,
                 first_port: int, clock: Clock | None = None) -> None:
        self.command = list(command)
        self.env = env
        self.clock = clock or Clock()
        self.workers = [WorkerProcess(f"w{i + 1}", first_port + i if first_port else
                                      free_port(host)) for i in range(count)]
        self.stopping = False

    async def _spawn(self, w: WorkerProcess) -> None:
        env = {**self.env, "REJOINDER_SERVER__PORT": str(w.port)}
        w.proc = await asyncio.create_subprocess_exec(*self.command, "--id", w.id, env=env,
                                                      preexec_fn=die_with_parent)
        w.started_at = self.clock.now()
        log.info("worker %s started (pid %d, port %d)", w.id, w.proc.pid, w.port)

    async def run(self) -> None:
        """Start every worker and keep them running until cancelled or ``stop``."""
        for w in self.workers:
            await self._spawn(w)
        await asyncio.gather(*(self._watch(w) for w in self.workers))

    async def _watch(self, w: WorkerProcess) -> None:
        while True:
            assert w.proc is not None
            code = await w.proc.wait()
            if self.stopping:
                return
            if self.clock.now() - w.started_at >= _HEALTHY_S:
                w.pause_s = _RESTART_FIRST_S
            log.error("worker %s exited (code %s); restarting in %.1f s", w.id, code,
                      w.pause_s)
            await self.clock.sleep(w.pause_s)
            w.pause_s = min(w.pause_s * 2, _RESTART_MAX_S)
            if self.stopping:
                return
            w.restarts += 1
            await self._spawn(w)

    async def stop(self, deadline_s: float) -> None:
        """SIGTERM every worker (they drain), SIGKILL one still there after
        ``deadline_s``."""
        self.stopping = True
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(deadline_s):
                await asyncio.gather(*(p.wait() for p in live))
        except TimeoutError:
            for proc in live:
                if proc.returncode is None:
                    log.error("worker pid %d still running after %.0f s; killed", proc.pid,
                              deadline_s)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in live))


def worker_command(args: Sequence[str]) -> list[str]:
    """The command line of a worker: this interpreter, ``rejoinder worker`` and ``args``."""
    return [sys.executable, "-m", "rejoinder", "worker", *args]


async def run_local_cluster(config: Config, count: int, worker_args: Sequence[str],
                            gateway: Callable[[Config, asyncio.Event, asyncio.Event],
                                              Coroutine[Any, Any, None]],
                            stop: asyncio.Event) -> None:
    """Start the bus (if needed) and the workers, run ``gateway(config, stop,
    workers_gone)`` in this process, and take it all down in order after ``stop``."""
    local: LocalNats | None = None
    if not config.bus.url:
        local = LocalNats(jetstream_dir(config))
        await local.start()
        config = dataclasses.replace(config, bus=dataclasses.replace(config.bus, url=local.url))
    env = {**os.environ, "REJOINDER_BUS__URL": config.bus.url,
           "REJOINDER_SERVER__HOST": config.server.host}
    supervisor = Supervisor(worker_command(worker_args), count, env, config.server.host,
                            config.bus.worker_port)
    workers_gone = asyncio.Event()
    watching: asyncio.Task[None] | None = None
    try:
        watching = asyncio.create_task(supervisor.run(), name="supervisor")
        gateway_task = asyncio.create_task(gateway(config, stop, workers_gone))
        waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({gateway_task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not gateway_task.done():
            await supervisor.stop(config.server.drain_s + _STOP_MARGIN_S)
            workers_gone.set()
        await gateway_task
    finally:
        if not supervisor.stopping:
            await supervisor.stop(5.0)
        await cancel_and_wait(watching, what="supervisor")
        if local is not None:
            await local.stop()
