"""The gateway's dispatch over NATS (rejoinder.cluster), with a stand-in for the NATS
client and exact times: which worker takes a call, when the gateway says 503, when a
silent worker leaves rotation; records as messages; the [bus] settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from rejoinder.cluster.bus import OFFER, decode, encode
from rejoinder.cluster.dispatch import Heartbeat, LoadTable
from rejoinder.cluster.gateway import GatewayServer
from rejoinder.config import BusOptions, Config, StoreOptions
from rejoinder.core.clock import Clock
from rejoinder.core.errors import ConfigError, OverloadedError
from rejoinder.store.db import (
    CallEnd,
    CallStart,
    GuardrailFlag,
    ToolCallLate,
    ToolCallRecord,
    TurnMeasured,
    TurnRecord,
)
from rejoinder.testing import fake_stack

OFFER_SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
             "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
             "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n"
             "a=fingerprint:sha-256 AA:BB\r\n")


class ManualClock(Clock):
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t


class _Msg:
    def __init__(self, data: bytes) -> None:
        self.data = data


class FakeNats:
    """Answers requests as the named workers would: an answer, or at_capacity."""

    def __init__(self, full: set[str] | None = None) -> None:
        self.full = full or set()
        self.requests: list[str] = []

    async def request(self, subject: str, payload: bytes,
                      timeout: float) -> _Msg:  # noqa: ASYNC109 (nats-py's signature)
        self.requests.append(subject)
        worker = subject.rsplit(".", 1)[-1]
        if worker in self.full:
            return _Msg(json.dumps({"error": "full", "code": "at_capacity",
                                    "status": 503}).encode())
        return _Msg(json.dumps({"sdp": "v=0 answer", "type": "answer",
                                "call_id": f"call-on-{worker}", "worker": worker}).encode())


def _beat(worker: str, calls: int, max_calls: int = 8, draining: bool = False) -> bytes:
    return Heartbeat(worker, calls, max_calls, f"http://{worker}:8080", 1,
                     draining).encode()


def _gateway(nc: FakeNats, clock: ManualClock) -> GatewayServer:
    config = Config(store=StoreOptions(path=":memory:"))
    return GatewayServer(config, fake_stack(), nc, clock=clock)


async def test_the_less_loaded_worker_takes_the_call():
    clock, nc = ManualClock(), FakeNats()
    gw = _gateway(nc, clock)
    gw.on_heartbeat(_beat("w1", 3))
    gw.on_heartbeat(_beat("w2", 1))
    answer = await gw.answer_offer(OFFER_SDP)
    assert nc.requests == [f"{OFFER}.w2"]
    assert answer == {"sdp": "v=0 answer", "type": "answer", "call_id": "call-on-w2"}
    # Counted at once, before w2's next heartbeat: the next two go to w2 (2, then 3 of
    # 8 ties w1 and the name breaks the tie), then w1.
    for _ in range(3):
        await gw.answer_offer(OFFER_SDP)
    assert nc.requests == [f"{OFFER}.w2", f"{OFFER}.w2", f"{OFFER}.w1", f"{OFFER}.w2"]


async def test_load_is_a_share_of_each_workers_capacity():
    table = LoadTable(stale_s=1.5)
    table.heard(Heartbeat("big", 4, 16, "u"), 0.0)
    table.heard(Heartbeat("small", 2, 4, "u"), 0.0)
    assert [s.beat.worker for s in table.candidates(0.0)] == ["big", "small"]


async def test_a_full_worker_is_passed_over_and_503_only_when_all_are_full():
    clock = ManualClock()
    nc = FakeNats(full={"w1"})  # w1's heartbeat is older than its refusal
    gw = _gateway(nc, clock)
    gw.on_heartbeat(_beat("w1", 0))
    gw.on_heartbeat(_beat("w2", 7))
    answer = await gw.answer_offer(OFFER_SDP)  # w1 first (emptier), refuses; w2 takes it
    assert answer["call_id"] == "call-on-w2"
    assert nc.requests == [f"{OFFER}.w1", f"{OFFER}.w2"]
    gw.on_heartbeat(_beat("w1", 8))
    gw.on_heartbeat(_beat("w2", 8))
    nc.requests.clear()
    with pytest.raises(OverloadedError) as refused:
        await gw.answer_offer(OFFER_SDP)
    assert refused.value.code == "at_capacity"
    assert nc.requests == []  # nobody with room was asked
    gw.on_heartbeat(_beat("w2", 7))  # one call ended on w2
    assert (await gw.answer_offer(OFFER_SDP))["call_id"] == "call-on-w2"


async def test_the_http_answer_is_503_only_when_no_worker_has_room():
    clock, nc = ManualClock(), FakeNats()
    gw = _gateway(nc, clock)
    gw.on_heartbeat(_beat("w1", 8))
    gw.on_heartbeat(_beat("w2", 2, draining=True))  # draining: takes no new call
    async with TestClient(TestServer(gw.app())) as client:
        body = {"type": "offer", "sdp": OFFER_SDP}
        refused = await client.post("/api/offer", json=body)
        assert refused.status == 503
        assert (await refused.json())["code"] == "at_capacity"
        gw.on_heartbeat(_beat("w1", 7))
        answered = await client.post("/api/offer", json=body)
        assert answered.status == 200
        assert (await answered.json())["call_id"] == "call-on-w1"
        health = await (await client.get("/api/health")).json()
    assert health["role"] == "gateway"
    assert [(w["worker"], w["calls"], w["max_calls"]) for w in health["workers"]] == \
        [("w1", 7, 8), ("w2", 2, 8)]


async def test_a_worker_that_stops_heartbeating_leaves_rotation_within_2_s():
    clock, nc = ManualClock(), FakeNats()
    gw = _gateway(nc, clock)
    start = clock.t
    for beat in range(3):  # every 0.5 s, then the worker dies after its third
        clock.t = start + beat * 0.5
        gw.on_heartbeat(_beat("w1", 0))
        gw.on_heartbeat(_beat("w2", 5))
    last = clock.t
    clock.t = last + 1.0
    gw.on_heartbeat(_beat("w2", 5))  # w2 lives on
    assert [s.beat.worker for s in gw.table.candidates(clock.t)] == ["w1", "w2"]
    clock.t = last + gw.config.bus.stale_s + 0.01  # 1.51 s after w1's last heartbeat
    assert [s.beat.worker for s in gw.table.candidates(clock.t)] == ["w2"]
    assert gw.config.bus.stale_s + 0.01 < 2.0
    await gw.answer_offer(OFFER_SDP)
    assert nc.requests == [f"{OFFER}.w2"]


async def test_a_silent_worker_is_left_for_the_next():
    import nats.errors

    class Silent(FakeNats):
        async def request(self, subject: str, payload: bytes,
                          timeout: float) -> _Msg:  # noqa: ASYNC109
            if subject.endswith(".w1"):
                self.requests.append(subject)
                raise nats.errors.NoRespondersError
            return await super().request(subject, payload, timeout)

    clock, nc = ManualClock(), Silent()
    gw = _gateway(nc, clock)
    gw.on_heartbeat(_beat("w1", 0))
    gw.on_heartbeat(_beat("w2", 3))
    assert (await gw.answer_offer(OFFER_SDP))["call_id"] == "call-on-w2"
    assert "w1" not in gw.table.workers  # out of rotation until it beats again


def test_a_heartbeat_that_is_not_one_is_ignored():
    gw = _gateway(FakeNats(), ManualClock())
    gw.on_heartbeat(b"{not json")
    gw.on_heartbeat(json.dumps({"worker": "w1"}).encode())
    assert gw.table.workers == {}


def test_every_record_survives_the_bus():
    at = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    tool = ToolCallRecord("book", '{"day": "monday"}', "ok", 12.5)
    records: list[Any] = [
        CallStart("c1", "webrtc", "booking", at, None),
        TurnRecord("c1", 0, 1, "completed", at, "hi", "hello", False, None, "committed",
                   True, None, {"llm_first_token": 120.0}, [tool], 410.0, 80.0,
                   [GuardrailFlag("flagged", "pii:email")]),
        TurnMeasured("c1", 1, 433.0),
        ToolCallLate("c1", 0, tool),
        CallEnd("c1", at, "ended"),
    ]
    ids = set()
    for record in records:
        data, msg_id = encode(record)
        assert decode(data) == record
        ids.add(msg_id)
        assert encode(record)[1] == msg_id  # the same record, the same id (deduplicated)
    assert len(ids) == len(records)
    with pytest.raises(ValueError):
        decode(b'{"kind": "nothing"}')


def test_bus_settings_are_checked():
    assert BusOptions().url == ""  # single-process by default
    with pytest.raises(ConfigError, match="bus.url"):
        BusOptions(url="http://nats:4222")
    with pytest.raises(ConfigError, match="bus.stale_s"):
        BusOptions(heartbeat_s=1.0, stale_s=0.5)
    with pytest.raises(ConfigError, match="bus.heartbeat_s"):
        BusOptions(heartbeat_s=float("nan"))


async def test_records_wait_in_jetstream_while_the_database_is_down(tmp_path):
    """A real nats-server: what a worker published is written once the database is back,
    in order, and acked only after the commit (nothing left pending)."""
    import asyncio

    from rejoinder.cluster.bus import BusSink, LocalNats, connect, ensure_stream
    from rejoinder.cluster.gateway import pending_records, write_records

    at = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    records: list[Any] = [CallStart("c1", "webrtc", "a", at),
                          *[TurnRecord("c1", i, i + 1, "completed", at) for i in range(5)],
                          CallEnd("c1", at, "ended")]

    class DownThenUp:
        def __init__(self) -> None:
            self.failures = 3
            self.written: list[Any] = []

        async def write(self, items: list[Any]) -> None:
            if self.failures:
                self.failures -= 1
                raise OSError("database is down")
            self.written.extend(items)

    bus = LocalNats(tmp_path / "jetstream")
    await bus.start()
    nc = await connect(bus.url, "test")
    writer = None
    try:
        js = await ensure_stream(nc)
        sink = BusSink(js, "w1")
        await sink.write(records[:4])
        await sink.write(records[2:])  # a retried batch: its repeats are stored once
        store, ended = DownThenUp(), []
        writer = asyncio.create_task(write_records(js, store, ended.append))  # type: ignore[arg-type]
        async with asyncio.timeout(20):
            while len(store.written) < len(records) or await pending_records(js):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert store.written == records
        assert ended == ["c1"]
    finally:
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        await nc.close()
        await bus.stop()


def test_the_deployment_examples_parse():
    """examples/cluster: the compose file is YAML with the services the README names,
    and each systemd unit is INI with the sections systemd needs."""
    import configparser
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent / "examples" / "cluster"
    compose = yaml.safe_load((root / "compose.yaml").read_text())
    services = compose["services"]
    assert {"nats", "gateway", "worker1", "worker2"} <= set(services)
    for name in ("gateway", "worker1", "worker2"):
        assert services[name]["command"][:2] == ["rejoinder", name.rstrip("12")]
        assert services[name]["environment"]["REJOINDER_BUS__URL"].startswith("nats://")
    units = sorted(root.glob("*.service"))
    assert [u.name for u in units] == ["rejoinder-gateway.service",
                                       "rejoinder-worker@.service"]
    for unit in units:
        ini = configparser.ConfigParser(interpolation=None, strict=False)
        ini.optionxform = str  # type: ignore[assignment,method-assign]
        ini.read_string(unit.read_text())
        assert {"Unit", "Service", "Install"} <= set(ini.sections())
        assert " gateway " in ini["Service"]["ExecStart"] or \
            " worker " in ini["Service"]["ExecStart"]
        assert ini["Service"]["KillSignal"] == "SIGTERM"


class _Record:
    """A JetStream message as the writer sees it."""

    def __init__(self, item: Any) -> None:
        self.data, _ = encode(item)
        self.subject = "rejoinder.records.w1"
        self.acked = False

    async def ack(self) -> None:
        self.acked = True

    async def in_progress(self) -> None:
        return None


def test_the_store_writer_outlives_every_error_nats_raises():
    """nats-py's fetch raises the builtin TimeoutError (not its own) when its time is
    spent before the server answers, as on a loaded machine; the stream may be away at
    start and the connection may close. The writer goes on through each, and what the
    workers sent is written: none of them may stop it for the rest of the run (which
    left the database empty, every record waiting in the stream)."""
    import asyncio

    import nats.errors
    import nats.js.errors

    from rejoinder.cluster.gateway import write_records
    from rejoinder.testing.virtual_time import run_virtual

    at = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
    records = [CallStart("c1", "webrtc", "a", at), TurnRecord("c1", 1, 1, "completed", at),
               CallEnd("c1", at, "ended")]
    messages = [_Record(r) for r in records]
    fetches: list[Any] = [TimeoutError(), nats.errors.TimeoutError(),
                          nats.errors.ConnectionClosedError(), messages[:2],
                          nats.js.errors.FetchTimeoutError(), messages[2:]]

    class Sub:
        async def fetch(self, batch: int, timeout: float) -> list[Any]:  # noqa: ASYNC109
            if not fetches:
                await asyncio.sleep(3600)
            outcome = fetches.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            return list(outcome)

    class Js:
        def __init__(self) -> None:
            self.refused = 1

        async def pull_subscribe(self, subject: str, durable: str, stream: str) -> Sub:
            if self.refused:  # JetStream not ready yet
                self.refused -= 1
                raise nats.js.errors.ServiceUnavailableError()
            return Sub()

    class Store:
        def __init__(self) -> None:
            self.written: list[Any] = []
            self.all_in = asyncio.Event()

        async def write(self, items: list[Any]) -> None:
            self.written.extend(items)
            if len(self.written) >= len(records):
                self.all_in.set()

    async def scenario() -> tuple[list[Any], list[str]]:
        store, ended = Store(), []
        writer = asyncio.create_task(write_records(Js(), store, ended.append))  # type: ignore[arg-type]
        all_in = asyncio.create_task(store.all_in.wait())
        await asyncio.wait({writer, all_in}, return_when=asyncio.FIRST_COMPLETED)
        all_in.cancel()
        assert not writer.done(), f"the writer stopped: {writer.exception()!r}"
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        return store.written, ended

    written, ended = run_virtual(scenario())
    assert written == records
    assert ended == ["c1"]
    assert all(m.acked for m in messages)


async def test_the_calls_of_a_restarted_worker_are_recorded_as_ended():
    """A worker heard again under a new pid was killed and restarted: the calls the
    gateway sent to its old process get their end (outcome worker_lost) instead of a
    call row open for ever; a call that ended on its own, a call on another worker and a
    call the new process took are left alone."""
    from rejoinder.store.recorder import Recorder

    class Written:
        def __init__(self) -> None:
            self.items: list[Any] = []

        async def write(self, items: list[Any]) -> None:
            self.items.extend(items)

    store = Written()
    recorder = Recorder(store)  # type: ignore[arg-type]
    recorder.start()
    clock = ManualClock()

    class Numbered(FakeNats):
        async def request(self, subject: str, payload: bytes,
                          timeout: float) -> _Msg:  # noqa: ASYNC109
            msg = await super().request(subject, payload, timeout)
            body = json.loads(msg.data)
            body["call_id"] += f"-{len(self.requests)}"
            return _Msg(json.dumps(body).encode())

    gw = GatewayServer(Config(store=StoreOptions(path=":memory:")), fake_stack(), Numbered(),
                       recorder, clock=clock)

    def beat(worker: str, calls: int, pid: int) -> bytes:
        return Heartbeat(worker, calls, 8, f"http://{worker}:8080", pid).encode()

    gw.on_heartbeat(beat("w1", 0, 100))
    gw.on_heartbeat(beat("w2", 1, 200))
    ids = [(await gw.answer_offer(OFFER_SDP))["call_id"] for _ in range(3)]
    assert ids == ["call-on-w1-1", "call-on-w1-2", "call-on-w2-3"]
    gw.call_ended("call-on-w1-2")  # its end came through the stream
    gw.on_heartbeat(beat("w1", 2, 100))  # the same process: nothing lost
    gw.on_heartbeat(beat("w2", 1, 200))
    clock.t += 5.0
    gw.on_heartbeat(beat("w1", 0, 101))  # restarted
    gw.on_heartbeat(beat("w2", 1, 200))
    assert (await gw.answer_offer(OFFER_SDP))["call_id"] == "call-on-w1-4"
    gw.on_heartbeat(beat("w1", 1, 101))
    await recorder.flush()
    await recorder.close()
    assert [(e.call_id, e.outcome) for e in store.items] == [("call-on-w1-1", "worker_lost")]
    assert isinstance(store.items[0], CallEnd)
    assert sorted(gw.placed) == ["call-on-w1-4", "call-on-w2-3"]
