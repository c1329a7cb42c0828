"""Reads across calls for the operator's dashboard: the calls list and the turns the
latency statistics and the weekly review are computed from (``review.py``).

Ranges are on the call's start, ``[start, end)``, in UTC; a turn belongs to the range of
its call, so a call that began before midnight counts whole in the day it began.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from rejoinder.store.db import Store
from rejoinder.store.models import STAGE_COLUMNS, CallRow, ToolCallRow, TurnRow

#: The outcomes a calls list can be filtered by; "none": a call with no outcome (still
#: going, or the server did not live to see it end).
OUTCOMES = ("ended", "failed", "server_stopped", "none")


@dataclass(frozen=True)
class CallFilter:
    start: datetime | None = None  # aware, UTC
    end: datetime | None = None
    outcome: str | None = None
    transport: str | None = None
    agent: str | None = None

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.start is not None:
            clauses.append(CallRow.started_at >= self.start)
        if self.end is not None:
            clauses.append(CallRow.started_at < self.end)
        if self.outcome == "none":
            clauses.append(CallRow.outcome.is_(None))
        elif self.outcome is not None:
            clauses.append(CallRow.outcome == self.outcome)
        if self.transport is not None:
            clauses.append(CallRow.transport == self.transport)
        if self.agent is not None:
            clauses.append(CallRow.agent == self.agent)
        return clauses


@dataclass(frozen=True)
class TurnStat:
    """What the statistics need of one turn record (no transcripts)."""

    call_id: str
    seq: int
    turn: int
    outcome: str
    at: datetime  # the caller's end of speech, else the call's start; aware, UTC
    stages_ms: dict[str, float] = field(default_factory=dict)
    caller_v2v_ms: float | None = None
    barge_in_stop_ms: float | None = None
    speculation: str | None = None
    tts_cached: bool | None = None
    interrupted: bool = False
    error_code: str | None = None


async def list_calls(store: Store, where: CallFilter, *, limit: int = 50,
                     offset: int = 0) -> dict[str, object]:
    """One page of calls, newest first, each with its number of turns and failed turns,
    and how many calls match in all."""
    counts = (select(TurnRow.call_id.label("call_id"), func.count().label("turns"),
                     func.count(TurnRow.error_code).label("errors"))
              .group_by(TurnRow.call_id).subquery())
    query = (select(CallRow.__table__, counts.c.turns, counts.c.errors)
             .outerjoin(counts, counts.c.call_id == CallRow.id)
             .where(*where.where())
             .order_by(CallRow.started_at.desc(), CallRow.id)
             .limit(limit).offset(offset))
    async with store.engine.connect() as conn:
        total = (await conn.execute(
            select(func.count()).select_from(CallRow).where(*where.where()))).scalar_one()
        rows = (await conn.execute(query)).mappings().all()
    return {
        "total": int(total), "limit": limit, "offset": offset,
        "calls": [{"call_id": r["id"], "transport": r["transport"], "agent": r["agent"],
                   "started_at": iso(r["started_at"]), "ended_at": iso(r["ended_at"]),
                   "outcome": r["outcome"], "turns": int(r["turns"] or 0),
                   "errors": int(r["errors"] or 0)} for r in rows],
    }


async def turn_stats(store: Store, where: CallFilter) -> list[TurnStat]:
    """Every turn of the matching calls, in call and turn order."""
    stage_cols = [getattr(TurnRow, f"{s}_ms") for s in STAGE_COLUMNS]
    query = (select(TurnRow.call_id, TurnRow.seq, TurnRow.turn, TurnRow.outcome,
                    TurnRow.speech_end_at, CallRow.started_at, TurnRow.caller_v2v_ms,
                    TurnRow.speculation, TurnRow.tts_cached, TurnRow.interrupted,
                    TurnRow.error_code, TurnRow.barge_in_stop_ms, *stage_cols)
             .join(CallRow, CallRow.id == TurnRow.call_id)
             .where(*where.where())
             .order_by(CallRow.started_at, TurnRow.call_id, TurnRow.seq))
    async with store.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    out: list[TurnStat] = []
    for r in rows:
        stages = {s: float(v) for s, v in zip(STAGE_COLUMNS, tuple(r)[12:], strict=True)
                  if isinstance(v, int | float)}
        out.append(TurnStat(
            call_id=r[0], seq=r[1], turn=r[2], outcome=r[3], at=utc(r[4] or r[5]),
            stages_ms=stages, caller_v2v_ms=r[6], speculation=r[7], tts_cached=r[8],
            interrupted=bool(r[9]), error_code=r[10], barge_in_stop_ms=r[11]))
    return out


async def tool_statuses(store: Store, where: CallFilter) -> list[str]:
    """The status of every tool call in the matching calls."""
    query = (select(ToolCallRow.status).join(CallRow, CallRow.id == ToolCallRow.call_id)
             .where(*where.where()))
    async with store.engine.connect() as conn:
        return [str(s) for s in (await conn.execute(query)).scalars().all()]


async def distinct_values(store: Store, where: CallFilter) -> dict[str, list[str]]:
    """The agents and transports among the matching calls (the dashboard's filters)."""
    async with store.engine.connect() as conn:
        agents = (await conn.execute(select(CallRow.agent).where(*where.where())
                                     .distinct().order_by(CallRow.agent))).scalars().all()
        transports = (await conn.execute(
            select(CallRow.transport).where(*where.where()).distinct()
            .order_by(CallRow.transport))).scalars().all()
    return {"agents": [str(a) for a in agents], "transports": [str(t) for t in transports]}


def utc(value: datetime) -> datetime:
    """SQLite keeps no zone; everything stored is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    return None if value is None else utc(value).isoformat()
