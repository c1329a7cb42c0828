"""Call records: written and read back on SQLite and a real PostgreSQL, migrations from
empty, retention and deletion, a database outage mid-call, a full queue."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from rejoinder.config import StoreOptions
from rejoinder.core.errors import ConfigError, ProviderTimeout, error_code
from rejoinder.store import (
    CallStart,
    Recorder,
    Store,
    ToolCallRecord,
    TurnRecord,
    database_url,
)
from rejoinder.store.db import Write, _alembic_config
from rejoinder.store.models import Base
from rejoinder.testing.virtual_time import run_virtual
from store_support import PgCluster, pg_cluster


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    with pg_cluster() as cluster:
        if isinstance(cluster, str):
            pytest.skip(cluster)
        yield cluster


async def _fresh_pg_url(cluster: PgCluster) -> str:
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(host="127.0.0.1", port=cluster.port, user="postgres",
                                 database="postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:{cluster.port}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/data/calls.db"
    else:
        url = await _fresh_pg_url(request.getfixturevalue("pg"))
    s = Store(url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


def _events(turn: int, user: str, agent: Sequence[str], *, heard: str | None = None,
            outcome: str = "completed", error: BaseException | None = None,
            ) -> list[dict[str, object]]:
    """The events a conversation sends for one finished turn, in the engine's order."""
    out: list[dict[str, object]] = [{"type": "user", "turn": turn, "text": user}]
    out += [{"type": "agent", "turn": turn, "text": a} for a in agent]
    if heard is not None:
        out.append({"type": "interrupted", "turn": turn, "heard": heard})
    if error is not None:
        out.append({"type": "error", "turn": turn, "message": str(error),
                    "code": error_code(error)})
    out.append({"type": "trace", "event": "turn", "call_id": "x", "turn": turn,
                "outcome": outcome, "speech_end_wall": 1_700_000_000.25,
                "ms_after_speech_end": {"speech_end": 0.0, "vad_end": 100.0,
                                        "turn_confirmed": 160.0, "stt_final": 210.0,
                                        "llm_first_token": 330.5, "first_audio_sent": 480.0},
                "speculation": "committed", "tts_cached": False,
                **({"error": str(error)} if error is not None else {})})
    return out


# -- the schema ------------------------------------------------------------------------------
async def test_migrations_from_empty_build_exactly_the_models(store: Store) -> None:
    def diff(connection):  # type: ignore[no-untyped-def]
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)

    async with store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        heads = await conn.run_sync(
            lambda c: ScriptDirectory.from_config(_alembic_config(c)).get_heads())
    assert await store.revision() == heads[0]
    await store.migrate()  # at the newest revision already: nothing to do, nothing lost


async def test_records_survive_a_restart_that_migrates_again(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/calls.db"
    first = Store(url)
    await first.migrate()
    await first.write([CallStart("c1", "webrtc", "Agent", datetime.now(UTC)),
                       TurnRecord("c1", 0, 1, "completed", user_text="hello")])
    await first.close()
    second = Store(url)
    await second.migrate()
    record = await second.get_call("c1")
    await second.close()
    assert record is not None and [t["user_text"] for t in record["turns"]] == ["hello"]


def test_urls_get_their_async_driver(tmp_path) -> None:
    assert database_url(StoreOptions(path=str(tmp_path / "a.db"))) == \
        f"sqlite+aiosqlite:///{tmp_path}/a.db"
    assert database_url(StoreOptions(url="postgresql://u:p@h/db")) == \
        "postgresql+asyncpg://u:p@h/db"
    assert database_url(StoreOptions(url="postgres://h/db")) == "postgresql+asyncpg://h/db"
    assert "p@h" not in repr(StoreOptions(url="postgresql://u:p@h/db"))
    with pytest.raises(ConfigError, match="store.url"):
        StoreOptions(url="mysql://h/db")


async def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    s = Store(f"sqlite+aiosqlite:///{tmp_path}/calls.db")
    await s.migrate()
    async with s.engine.connect() as conn:
        mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
    await s.close()
    assert mode == "wal"


# -- writing and reading ---------------------------------------------------------------------
async def test_a_call_is_recorded_turn_by_turn_and_read_back(store: Store) -> None:
    recorder = Recorder(store)
    recorder.start()
    log = recorder.call("call-1", transport="webrtc", agent="Rejoinder")
    log.begin()
    for e in _events(1, "My card is 4111 1111 1111 1111, can you check it?",
                     ["Sure, one moment.", "It is fine."]):
        log.on_event(e)
    for e in _events(2, "Call me on 555 123 4567 please", ["I will call you"],
                     heard="I will", outcome="interrupted"):
        log.on_event(e)
    timeout = ProviderTimeout("llm", "no first token within 10.0 s from http://secret-host")
    for e in _events(3, "and then?", [], outcome="failed", error=timeout):
        log.on_event(e)
    log.end("ended")
    await recorder.flush()
    record = await store.get_call("call-1")
    await recorder.close()

    assert record is not None
    assert (record["transport"], record["agent"], record["outcome"]) == \
        ("webrtc", "Rejoinder", "ended")
    assert record["twilio_call_sid"] is None and record["ended_at"] is not None
    turns = record["turns"]
    assert isinstance(turns, list) and [t["turn"] for t in turns] == [1, 2, 3]
    first, second, third = turns
    # Redacted as the LLM saw it; the agent's clauses joined.
    assert first["user_text"] == "My card is [card number], can you check it?"
    assert first["agent_text"] == "Sure, one moment. It is fine."
    assert (first["interrupted"], first["heard_text"]) == (False, None)
    assert first["ms_after_speech_end"] == {
        "vad_end": 100.0, "turn_confirmed": 160.0, "stt_final": 210.0,
        "llm_first_token": 330.5, "first_audio_sent": 480.0}
    assert (first["speculation"], first["tts_cached"]) == ("committed", False)
    assert first["speech_end_at"] == "2023-11-14T22:13:20.250000+00:00"
    assert second["user_text"] == "Call me on [phone number] please"
    assert (second["outcome"], second["interrupted"], second["heard_text"]) == \
        ("interrupted", True, "I will")
    # Errors are codes: the provider's message (a host name here) is not kept.
    assert (third["outcome"], third["error_code"]) == ("failed", error_code(timeout))
    assert "secret-host" not in repr(record)


async def test_tool_calls_have_a_table(store: Store) -> None:
    await store.write([
        CallStart("c", "webrtc", "A", datetime.now(UTC)),
        TurnRecord("c", 0, 1, "completed", tool_calls=[
            ToolCallRecord("lookup_order", '{"order": "[number]"}', "ok", 41.5),
            ToolCallRecord("transfer", "{}", "error", None)]),
    ])
    record = await store.get_call("c")
    assert record is not None
    turns = record["turns"]
    assert isinstance(turns, list)
    assert turns[0]["tool_calls"] == [
        {"name": "lookup_order", "arguments": '{"order": "[number]"}', "duration_ms": 41.5,
         "status": "ok"},
        {"name": "transfer", "arguments": "{}", "duration_ms": None, "status": "error"}]


async def test_a_retried_write_changes_nothing(store: Store) -> None:
    items: list[Write] = [CallStart("c", "webrtc", "A", datetime.now(UTC)),
                          TurnRecord("c", 0, 1, "completed", user_text="hi")]
    await store.write(items)
    await store.write(items)  # the first commit's answer was lost: the writer tries again
    record = await store.get_call("c")
    assert record is not None and len(record["turns"]) == 1  # type: ignore[arg-type]


# -- retention and deletion ------------------------------------------------------------------
async def test_one_call_is_deleted_on_request_and_old_calls_are_pruned(store: Store) -> None:
    now = datetime.now(UTC)
    await store.write([
        CallStart("old", "webrtc", "A", now - timedelta(days=40)),
        TurnRecord("old", 0, 1, "completed", tool_calls=[ToolCallRecord("t", "{}", "ok")]),
        CallStart("new", "webrtc", "A", now - timedelta(days=1)),
        TurnRecord("new", 0, 1, "completed"),
        CallStart("gone", "webrtc", "A", now),
        TurnRecord("gone", 0, 1, "completed", tool_calls=[ToolCallRecord("t", "{}", "ok")]),
    ])
    assert await store.delete_call("gone") is True
    assert await store.delete_call("gone") is False
    assert await store.get_call("gone") is None
    assert await store.prune(now - timedelta(days=30)) == 1
    assert await store.get_call("old") is None
    assert await store.get_call("new") is not None
    from sqlalchemy import func, select

    from rejoinder.store.models import ToolCallRow, TurnRow
    async with store.engine.connect() as conn:  # no orphans left behind
        assert (await conn.execute(select(func.count()).select_from(TurnRow))).scalar() == 1
        assert (await conn.execute(select(func.count()).select_from(ToolCallRow))).scalar() \
            == 0


async def test_turns_of_a_deleted_call_are_not_recorded(store: Store) -> None:
    recorder = Recorder(store)
    recorder.start()
    log = recorder.call("c", transport="webrtc", agent="A")
    for e in _events(1, "hello", ["hi"]):
        log.on_event(e)
    await recorder.flush()
    assert await store.delete_call("c")
    recorder.forget("c")
    for e in _events(2, "again", ["hi again"]):
        log.on_event(e)
    log.end("ended")
    await recorder.flush()
    await recorder.close()
    assert await store.get_call("c") is None


# -- the database going away -----------------------------------------------------------------
async def test_a_postgresql_outage_mid_call_loses_no_turn(pg: PgCluster) -> None:
    store = Store(await _fresh_pg_url(pg))
    await store.migrate()
    recorder = Recorder(store)
    recorder.start()
    log = recorder.call("c", transport="webrtc", agent="A")
    try:
        for e in _events(1, "before the outage", ["one"]):
            log.on_event(e)
        await recorder.flush()
        pg.stop()
        try:
            for turn in (2, 3):
                for e in _events(turn, f"during the outage {turn}", ["two"]):
                    log.on_event(e)
            log.end("ended")
            await asyncio.sleep(1.0)  # the writer tries, fails, and keeps the records
            assert recorder.pending == 3 and recorder.written == 2
        finally:
            pg.start()
        await asyncio.wait_for(recorder.flush(), 30)
        record = await store.get_call("c")
    finally:
        await recorder.close()
        await store.close()
    assert record is not None and record["outcome"] == "ended"
    assert [t["user_text"] for t in record["turns"]] == [  # type: ignore[attr-defined]
        "before the outage", "during the outage 2", "during the outage 3"]
    assert recorder.dropped == 0


class FlakyStore(Store):
    """A store whose database is down while ``down`` is set (the writes raise)."""

    def __init__(self) -> None:
        self.rows: list[Write] = []
        self.down = False
        self.attempts = 0

    async def write(self, items: Sequence[Write]) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionRefusedError("database down")
        self.rows.extend(items)


def test_records_wait_while_the_database_is_down_and_are_written_in_order() -> None:
    async def scenario() -> tuple[list[int], int]:
        store = FlakyStore()
        recorder = Recorder(store)
        recorder.start()
        log = recorder.call("c", transport="webrtc", agent="A")
        store.down = True
        for turn in (1, 2, 3):
            for e in _events(turn, "words", ["reply"]):
                log.on_event(e)
            await asyncio.sleep(4.0)
        attempts_while_down = store.attempts
        store.down = False
        await recorder.flush()
        await recorder.close()
        return [r.turn for r in store.rows if isinstance(r, TurnRecord)], attempts_while_down

    turns, attempts = run_virtual(scenario())
    assert turns == [1, 2, 3]
    # Retries back off (0.25, 0.5, 1, 2, 4, 5... s): 12 s of outage is a handful of tries.
    assert 4 <= attempts <= 8


def test_a_full_queue_drops_new_records_with_a_clear_log_line(caplog) -> None:
    async def scenario() -> tuple[int, int]:
        store = FlakyStore()
        store.down = True
        recorder = Recorder(store, queue_max=2)
        recorder.start()
        log = recorder.call("c", transport="webrtc", agent="A")
        log.begin()  # one record
        for turn in (1, 2, 3):
            for e in _events(turn, "words", ["reply"]):
                log.on_event(e)
            await asyncio.sleep(1.0)
        store.down = False
        await recorder.flush()
        await recorder.close()
        return recorder.dropped, len(store.rows)

    with caplog.at_level(logging.WARNING, logger="rejoinder.store.recorder"):
        dropped, written = run_virtual(scenario())
    assert (dropped, written) == (2, 2)
    messages = [r.getMessage() for r in caplog.records]
    assert any("queue full" in m and "dropping" in m for m in messages)
    assert any("2 records were dropped" in m for m in messages)
