"""The bus: NATS subjects, the connection, a local nats-server, and call records as
JetStream messages.

Subjects (``rejoinder.`` prefix):

    rejoinder.heartbeat          a worker's load, every ``bus.heartbeat_s`` (JSON)
    rejoinder.offer.<worker>     request-reply: a WebRTC offer to that worker
    rejoinder.offer              the same to the "workers" queue group (any one of them)
    rejoinder.phone.<worker>     request-reply: a one-time token for a Twilio stream
    rejoinder.records.<worker>   JetStream stream REJOINDER_RECORDS: the worker's call
                                 records (file storage), read by the gateway's one writer

A record is published with a ``Nats-Msg-Id`` (call, kind, sequence), so a batch the worker
publishes again after a failure is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from rejoinder.core.errors import ConfigError, MissingExtraError, RejoinderError
from rejoinder.store.db import (
    CallEnd,
    CallStart,
    GuardrailFlag,
    Store,
    ToolCallLate,
    ToolCallRecord,
    TurnMeasured,
    TurnRecord,
    Write,
)

log = logging.getLogger(__name__)

HEARTBEAT = "rejoinder.heartbeat"
OFFER = "rejoinder.offer"
PHONE = "rejoinder.phone"
RECORDS = "rejoinder.records"
STREAM = "REJOINDER_RECORDS"
QUEUE = "workers"
WRITER = "store-writer"  # the durable consumer: one, in the gateway

_KINDS: dict[str, type[Any]] = {
    "start": CallStart, "end": CallEnd, "turn": TurnRecord, "measured": TurnMeasured,
    "tool_late": ToolCallLate}
_KIND_OF = {cls: name for name, cls in _KINDS.items()}


def require_nats() -> Any:
    """The ``nats`` package, or an error that names the extra to install."""
    try:
        import nats
    except ImportError as exc:
        raise MissingExtraError("nats-py", "cluster") from exc
    return nats


async def connect(url: str, name: str) -> Any:
    """A NATS client connected to ``url`` that reconnects for ever."""
    nats = require_nats()
    return await nats.connect(url, name=name, max_reconnect_attempts=-1,
                              reconnect_time_wait=0.5, connect_timeout=5)


async def ensure_stream(nc: Any) -> Any:
    """The records stream (file storage, kept until the writer acks), and its context."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    js = nc.jetstream()
    config = StreamConfig(name=STREAM, subjects=[f"{RECORDS}.>"], storage=StorageType.FILE,
                          retention=RetentionPolicy.WORK_QUEUE, duplicate_window=120.0)
    try:
        await js.add_stream(config)
    except Exception as exc:  # exists with another config (an older version): keep it
        if "already in use" not in str(exc):
            raise
    return js


# -- records as messages -----------------------------------------------------------------
def encode(item: Write) -> tuple[bytes, str]:
    """A record as JSON, and its message id (the same record always gets the same one)."""
    kind = _KIND_OF[type(item)]
    body = {"kind": kind, **_plain(dataclasses.asdict(item))}
    seq = getattr(item, "seq", getattr(item, "turn", getattr(item, "turn_seq", "")))
    msg_id = f"{item.call_id}:{kind}:{seq}"
    if isinstance(item, ToolCallLate):
        msg_id += f":{item.tool_call.name}:{item.tool_call.status}"
    return json.dumps(body, separators=(",", ":")).encode(), msg_id


def decode(data: bytes) -> Write:
    """The record of a message; ValueError for one that is not a record."""
    try:
        body = json.loads(data)
        cls = _KINDS[body.pop("kind")]
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in body.items() if k in fields}
        for name in ("started_at", "ended_at", "speech_end_at"):
            if isinstance(kwargs.get(name), str):
                kwargs[name] = datetime.fromisoformat(kwargs[name])
        if cls is TurnRecord:
            kwargs["tool_calls"] = [ToolCallRecord(**t) for t in kwargs.get("tool_calls", [])]
            kwargs["guardrails"] = [GuardrailFlag(**g) for g in kwargs.get("guardrails", [])]
        if cls is ToolCallLate:
            kwargs["tool_call"] = ToolCallRecord(**kwargs["tool_call"])
        item: Write = cls(**kwargs)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a call record: {type(exc).__name__}") from None
    return item


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class BusSink(Store):
    """What a worker's recorder writes to: each record published to JetStream, acked by
    the stream (on disk) before the next. A failure raises, and the recorder keeps the
    batch and retries (rejoinder.store.recorder); the message ids make a retry harmless.
    Reads are the gateway's: here they fail as an unavailable store."""

    def __init__(self, js: Any, worker_id: str) -> None:  # no database of its own
        self.js = js
        self.subject = f"{RECORDS}.{worker_id}"

    async def write(self, items: Any) -> None:
        for item in items:
            data, msg_id = encode(item)
            await self.js.publish(self.subject, data, headers={"Nats-Msg-Id": msg_id},
                                  timeout=5.0)

    async def close(self) -> None:
        return None

    async def migrate(self) -> None:
        return None

    async def get_call(self, call_id: str) -> dict[str, object] | None:
        raise OSError("call records are read on the gateway")

    async def delete_call(self, call_id: str) -> bool:
        raise OSError("call records are deleted on the gateway")

    async def prune(self, before: datetime) -> int:
        return 0


# -- a local nats-server -----------------------------------------------------------------
def die_with_parent() -> None:
    """In a child before exec (Linux): SIGTERM when the parent dies, even by SIGKILL, so
    no nats-server or worker outlives the server that started it."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class LocalNats:
    """A nats-server with JetStream on a free loopback port, for ``serve --workers N``
    without ``bus.url``: its config in a temporary directory, its JetStream files in
    ``store_dir`` (kept, so records not yet written survive a restart); stopped on exit."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._tmp: str | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            raise ConfigError("bus.url", "no NATS server given and nats-server is not"
                              " installed (Debian: apt install nats-server)")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.mkdtemp(prefix="rejoinder-nats-")
        self.port = free_port()
        self._proc = await asyncio.create_subprocess_exec(
            binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd",
            str(self.store_dir), "-P", os.path.join(self._tmp, "nats.pid"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent)
        for _ in range(100):  # up within 5 s
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                log.info("local nats-server on port %d (JetStream in %s)", self.port,
                         self.store_dir)
                return
            if self._proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        await self.stop()
        raise RejoinderError("the local nats-server did not start")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
