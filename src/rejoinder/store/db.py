"""The call store: one small interface over SQLite (default) or PostgreSQL (by URL).

SQLAlchemy 2 (async): aiosqlite for SQLite, asyncpg for PostgreSQL. The schema is
Alembic's (``migrations/``), brought to the newest revision by :meth:`Store.migrate` at
start, from an empty database or from any older revision, so upgrades keep the records.
SQLite runs in WAL mode (readers never block the writer; a killed process loses nothing
that was committed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import delete, event, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from rejoinder.config import StoreOptions
from rejoinder.core.errors import ConfigError, MissingExtraError
from rejoinder.store.models import STAGE_COLUMNS, CallRow, ToolCallRow, TurnRow

log = logging.getLogger(__name__)


@dataclass
class CallStart:
    call_id: str
    transport: str
    agent: str
    started_at: datetime
    twilio_call_sid: str | None = None


@dataclass
class CallEnd:
    call_id: str
    ended_at: datetime
    outcome: str


@dataclass
class ToolCallRecord:
    name: str
    arguments: str  # JSON, already redacted
    status: str
    duration_ms: float | None = None


@dataclass(frozen=True)
class GuardrailFlag:
    """A guardrail's verdict in a turn: ``action`` blocked or flagged, by ``rule``."""

    action: str
    rule: str


@dataclass
class TurnRecord:
    """One finished turn, as stored. Texts are already redacted."""

    call_id: str
    seq: int
    turn: int
    outcome: str
    speech_end_at: datetime | None = None
    user_text: str = ""
    agent_text: str = ""
    interrupted: bool = False
    heard_text: str | None = None
    speculation: str | None = None
    tts_cached: bool | None = None
    error_code: str | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    caller_v2v_ms: float | None = None
    barge_in_stop_ms: float | None = None  # the turn's first hold: caller speech before it
    guardrails: list[GuardrailFlag] = field(default_factory=list)


@dataclass
class TurnMeasured:
    """The caller's measured latency of a turn whose record was already queued."""

    call_id: str
    turn: int
    caller_v2v_ms: float


@dataclass
class ToolCallLate:
    """A tool call that finished after its turn's record was written (a side effect the
    caller talked over: it completes, and is recorded under that turn)."""

    call_id: str
    turn_seq: int
    tool_call: ToolCallRecord


Write = CallStart | CallEnd | TurnRecord | TurnMeasured | ToolCallLate


def default_sqlite_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rejoinder" / "calls.db"


def database_url(options: StoreOptions) -> str:
    """The async SQLAlchemy URL for ``options`` (a plain postgresql:// or sqlite:// URL
    gets its async driver)."""
    if not options.url:
        path = Path(options.path).expanduser() if options.path else default_sqlite_path()
        return f"sqlite+aiosqlite:///{path}"
    url = options.url
    for plain, driver in (("postgres://", "postgresql+asyncpg://"),
                          ("postgresql://", "postgresql+asyncpg://"),
                          ("sqlite://", "sqlite+aiosqlite://")):
        if url.startswith(plain):
            return driver + url[len(plain):]
    return url


class Store:
    """Calls and their turns in a database. Every method is one transaction."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError("store.url", f"{self.dialect!r} is not sqlite or postgresql")
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 5.0}
        else:
            _require("asyncpg", "postgres")
            # A server restart must not leave dead connections in the pool.
            kwargs.update(pool_pre_ping=True, pool_size=2, max_overflow=2,
                          connect_args={"timeout": 5.0, "command_timeout": 10.0})
        self.engine: AsyncEngine = create_async_engine(parsed, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @classmethod
    def from_options(cls, options: StoreOptions) -> Store:
        return cls(database_url(options))

    async def close(self) -> None:
        await self.engine.dispose()

    # -- schema -----------------------------------------------------------------------------
    async def migrate(self) -> None:
        """Bring the schema to the newest revision (from empty or from an older one)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)

    async def revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(_current_revision)

    # -- writes -----------------------------------------------------------------------------
    async def write(self, items: Sequence[Write]) -> None:
        """Write ``items`` in order, in one transaction. Writing the same item twice (a
        retry after a commit whose answer was lost) changes nothing."""
        ins = _insert_function(self.dialect)
        async with self.engine.begin() as conn:
            for item in items:
                if isinstance(item, CallStart):
                    await conn.execute(ins(CallRow).values(
                        id=item.call_id, transport=item.transport, agent=item.agent,
                        started_at=item.started_at, twilio_call_sid=item.twilio_call_sid,
                    ).on_conflict_do_nothing(index_elements=["id"]))
                elif isinstance(item, CallEnd):
                    await conn.execute(CallRow.__table__.update().where(  # type: ignore[attr-defined]
                        CallRow.id == item.call_id).values(
                        ended_at=item.ended_at, outcome=item.outcome))
                elif isinstance(item, ToolCallLate):
                    t = item.tool_call
                    await conn.execute(ins(ToolCallRow).values(
                        call_id=item.call_id, turn_seq=item.turn_seq, name=t.name,
                        arguments=t.arguments, duration_ms=t.duration_ms, status=t.status))
                elif isinstance(item, TurnMeasured):  # the first measurement stays
                    await conn.execute(TurnRow.__table__.update().where(  # type: ignore[attr-defined]
                        TurnRow.call_id == item.call_id, TurnRow.turn == item.turn,
                        TurnRow.caller_v2v_ms.is_(None)).values(
                        caller_v2v_ms=item.caller_v2v_ms))
                else:
                    result = await conn.execute(ins(TurnRow).values(
                        call_id=item.call_id, seq=item.seq, turn=item.turn,
                        outcome=item.outcome, speech_end_at=item.speech_end_at,
                        user_text=item.user_text, agent_text=item.agent_text,
                        interrupted=item.interrupted, heard_text=item.heard_text,
                        speculation=item.speculation, tts_cached=item.tts_cached,
                        error_code=item.error_code, caller_v2v_ms=item.caller_v2v_ms,
                        barge_in_stop_ms=item.barge_in_stop_ms,
                        guardrails=_guardrails_json(item.guardrails),
                        **{f"{s}_ms": item.stages_ms.get(s) for s in STAGE_COLUMNS},
                    ).on_conflict_do_nothing(index_elements=["call_id", "seq"]))
                    if result.rowcount and item.tool_calls:
                        await conn.execute(ins(ToolCallRow), [
                            {"call_id": item.call_id, "turn_seq": item.seq, "name": t.name,
                             "arguments": t.arguments, "duration_ms": t.duration_ms,
                             "status": t.status} for t in item.tool_calls])

    # -- reads and deletes -------------------------------------------------------------------
    async def get_call(self, call_id: str) -> dict[str, object] | None:
        """The call's record with its turns (and their tool calls) in order, or None."""
        async with self.engine.connect() as conn:
            call = (await conn.execute(select(CallRow.__table__).where(
                CallRow.id == call_id))).mappings().first()
            if call is None:
                return None
            turns = (await conn.execute(select(TurnRow.__table__).where(
                TurnRow.call_id == call_id).order_by(TurnRow.seq))).mappings().all()
            tools = (await conn.execute(select(ToolCallRow.__table__).where(
                ToolCallRow.call_id == call_id).order_by(ToolCallRow.id))).mappings().all()
        by_turn: dict[int, list[dict[str, object]]] = {}
        for t in tools:
            by_turn.setdefault(t["turn_seq"], []).append({
                "name": t["name"], "arguments": t["arguments"],
                "duration_ms": t["duration_ms"], "status": t["status"]})
        return {
            "call_id": call["id"],
            "transport": call["transport"],
            "twilio_call_sid": call["twilio_call_sid"],
            "agent": call["agent"],
            "started_at": _iso(call["started_at"]),
            "ended_at": _iso(call["ended_at"]),
            "outcome": call["outcome"],
            "turns": [_turn_json(t, by_turn.get(t["seq"], [])) for t in turns],
        }

    async def delete_call(self, call_id: str) -> bool:
        """Delete one call's record (turns and tool calls too). False: there was none."""
        async with self.engine.begin() as conn:
            return await _delete_calls(conn, CallRow.id == call_id) > 0

    async def prune(self, before: datetime) -> int:
        """Delete the calls that started before ``before``; returns how many."""
        async with self.engine.begin() as conn:
            return await _delete_calls(conn, CallRow.started_at < before)


async def _delete_calls(conn: Any, where: Any) -> int:
    # Explicit child deletes rather than ON DELETE CASCADE alone: SQLite enforces foreign
    # keys only on connections that asked for it.
    ids = select(CallRow.id).where(where).scalar_subquery()
    await conn.execute(delete(ToolCallRow).where(ToolCallRow.call_id.in_(ids)))
    await conn.execute(delete(TurnRow).where(TurnRow.call_id.in_(ids)))
    result = await conn.execute(delete(CallRow).where(where))
    return int(result.rowcount or 0)


def _turn_json(t: Any, tools: list[dict[str, object]]) -> dict[str, object]:
    return {
        "seq": t["seq"], "turn": t["turn"], "outcome": t["outcome"],
        "speech_end_at": _iso(t["speech_end_at"]),
        "user_text": t["user_text"], "agent_text": t["agent_text"],
        "interrupted": t["interrupted"], "heard_text": t["heard_text"],
        "speculation": t["speculation"], "tts_cached": t["tts_cached"],
        "error_code": t["error_code"],
        "ms_after_speech_end": {s: t[f"{s}_ms"] for s in STAGE_COLUMNS
                                if t[f"{s}_ms"] is not None},
        "caller_v2v_ms": t["caller_v2v_ms"],
        "barge_in_stop_ms": t["barge_in_stop_ms"],
        "guardrails": _guardrails_list(t["guardrails"]),
        "tool_calls": tools,
    }


def _guardrails_json(flags: Sequence[GuardrailFlag]) -> str | None:
    if not flags:
        return None
    return json.dumps([{"action": f.action, "rule": f.rule} for f in flags],
                      separators=(",", ":"))


def _guardrails_list(value: str | None) -> list[dict[str, str]]:
    """The turn's guardrail flags; [] for none (or a value this version cannot read)."""
    if not value:
        return []
    try:
        items = json.loads(value)
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    return [{"action": str(i.get("action", "")), "rule": str(i.get("rule", ""))}
            for i in items if isinstance(i, dict)]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite keeps no zone; everything stored is UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def _insert_function(dialect: str) -> Any:
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        return sqlite_insert
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    return pg_insert


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # in WAL: durable against a killed process
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _alembic_config(connection: Connection) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location",
                        str(resources.files("rejoinder.store") / "migrations"))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    from alembic import command

    command.upgrade(_alembic_config(connection), "head")


def _current_revision(connection: Connection) -> str | None:
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _require(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(module, extra)
