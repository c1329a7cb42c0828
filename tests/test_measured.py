"""The caller's measured voice-to-voice latency: posted on the events channel, checked,
stored with its turn (before or after the turn's record), junk ignored quietly; and the
store's revision 0002 that holds it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from alembic import command

from rejoinder.config import Config
from rejoinder.server.call import Call
from rejoinder.store import CallStart, Recorder, Store, TurnRecord
from rejoinder.store.db import _alembic_config
from rejoinder.testing import fake_stack


class Channel:
    """The server's end of the events data channel, without a network."""

    readyState = "open"

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[..., Any]] = {}
        self.sent: list[dict[str, object]] = []

    def on(self, name: str, handler: Callable[..., Any]) -> None:
        self.handlers[name] = handler

    def send(self, message: str) -> None:
        self.sent.append(json.loads(message))

    def receive(self, message: object) -> None:
        self.handlers["message"](message)


def _turn(n: int) -> list[dict[str, object]]:
    return [{"type": "user", "turn": n, "text": "what time is it"},
            {"type": "agent", "turn": n, "text": "It is noon."}]


def _trace(n: int) -> dict[str, object]:
    return {"type": "trace", "event": "turn", "call_id": "x", "turn": n,
            "outcome": "completed", "speech_end_wall": 1_700_000_000.5,
            "ms_after_speech_end": {"speech_end": 0.0, "vad_end": 100.0,
                                    "first_audio_sent": 480.0}}


def _measured(turn: object, v2v: object) -> str:
    return json.dumps({"type": "measured", "turn": turn, "v2v_ms": v2v})


@pytest.fixture
async def store(tmp_path):  # type: ignore[no-untyped-def]
    s = Store(f"sqlite+aiosqlite:///{tmp_path}/calls.db")
    await s.migrate()
    yield s
    await s.close()


async def test_measured_latency_round_trip_into_the_turn_record(store: Store) -> None:
    recorder = Recorder(store)
    recorder.start()
    call = Call(Config(), fake_stack(), lambda c: None)
    record = recorder.call(call.id, transport="webrtc", agent="Rejoinder")
    seen: list[dict[str, object]] = []
    call.observers += [record.on_event, seen.append]
    channel = Channel()
    call.transport._on_datachannel(channel)  # type: ignore[attr-defined]
    try:
        # Turn 1: the page hears the reply (and says so) before the turn's record ends it.
        for e in _turn(1):
            call.send_event(e)
        channel.receive(_measured(1, 612.34))
        call.send_event(_trace(1))
        # Turn 2: the measurement comes after the record was queued.
        for e in [*_turn(2), _trace(2)]:
            call.send_event(e)
        channel.receive(_measured(2, 701))
        record.end("ended")
        await recorder.flush()
    finally:
        await recorder.close()
        await call.transport.close()
    assert [e for e in seen if e["type"] == "measured"] == [
        {"type": "measured", "turn": 1, "v2v_ms": 612.3},
        {"type": "measured", "turn": 2, "v2v_ms": 701.0}]
    # Nothing of it goes back to the caller.
    assert not any(e["type"] == "measured" for e in channel.sent)
    stored = await store.get_call(call.id)
    assert stored is not None
    assert [(t["turn"], t["caller_v2v_ms"]) for t in stored["turns"]] == [(1, 612.3),
                                                                          (2, 701.0)]


async def test_junk_and_unknown_turns_are_ignored_with_one_log_line(caplog) -> None:
    call = Call(Config(), fake_stack(), lambda c: None)
    seen: list[dict[str, object]] = []
    call.observers.append(seen.append)
    channel = Channel()
    call.transport._on_datachannel(channel)  # type: ignore[attr-defined]
    call.send_event({"type": "agent", "turn": 1, "text": "Hello!"})  # a greeting: no v2v
    for e in _turn(2):
        call.send_event(e)
    call.send_event({"type": "user", "turn": 3, "text": "and"})  # not answered yet
    seen.clear()
    junk: list[object] = [
        "not json", "", "null", "[]", '"measured"', b'{"type": "measured"}', 42,
        json.dumps({"type": "measured", "turn": 2}),
        json.dumps({"type": "measured", "turn": 2, "v2v_ms": 500, "extra": 1}),
        json.dumps({"type": "hello", "turn": 2, "v2v_ms": 500}),
        _measured(True, 500), _measured("2", 500), _measured(2.0, 500), _measured(2, "500"),
        _measured(2, True), _measured(2, None), _measured(2, -5), _measured(2, 0),
        _measured(2, 60_000.5), '{"type": "measured", "turn": 2, "v2v_ms": NaN}',
        '{"type": "measured", "turn": 2, "v2v_ms": Infinity}',
        '{"type": "measured", "turn": 2, "v2v_ms": 1e400}',
        _measured(1, 500),  # the greeting
        _measured(3, 500),  # no agent audio yet
        _measured(99, 500), _measured(-1, 500),
        _measured(2, 500) + " " * 300,  # too long
    ]
    with caplog.at_level(logging.DEBUG, logger="rejoinder.observability.measured"):
        for message in junk:
            call.on_caller_message(message)
        assert seen == []
        call.on_caller_message(_measured(2, 500))
        call.on_caller_message(_measured(2, 400))  # measured once
    await call.transport.close()
    assert seen == [{"type": "measured", "turn": 2, "v2v_ms": 500.0}]
    assert call.measured.ignored == len(junk) + 1
    assert len([r for r in caplog.records if r.name == "rejoinder.observability.measured"]) == 1


async def test_revision_0002_adds_the_column_and_keeps_older_records(tmp_path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0001"))
            await conn.exec_driver_sql(
                "INSERT INTO calls (id, transport, agent, started_at) "
                "VALUES ('c1', 'webrtc', 'A', '2026-01-01 00:00:00')")
            await conn.exec_driver_sql(
                "INSERT INTO turns (call_id, seq, turn, outcome, user_text, agent_text, "
                "interrupted) VALUES ('c1', 0, 1, 'completed', 'hi', 'hello', 0)")
        assert await store.revision() == "0001"
        async with store.engine.begin() as conn:  # later revisions have tests of their own
            await conn.run_sync(lambda c: command.upgrade(_alembic_config(c), "0002"))
        assert await store.revision() == "0002"
        async with store.engine.connect() as conn:
            columns = await conn.run_sync(lambda c: [
                row[1] for row in c.exec_driver_sql("PRAGMA table_info(turns)")])
        assert "caller_v2v_ms" in columns
        await store.migrate()  # the writer writes the newest schema
        await store.write([CallStart("c1", "webrtc", "A", _now()),
                           TurnRecord("c1", 1, 2, "completed", caller_v2v_ms=640.0)])
        record = await store.get_call("c1")
        assert record is not None
        assert [(t["user_text"], t["caller_v2v_ms"]) for t in record["turns"]] == [
            ("hi", None), ("", 640.0)]
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda c: command.downgrade(_alembic_config(c), "0001"))
        assert await store.revision() == "0001"
    finally:
        await store.close()


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime
    return datetime.now(UTC)
