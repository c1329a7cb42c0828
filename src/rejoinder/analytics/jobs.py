"""The ``call_analytics`` table: one row per ended call, which is both the job and, once
done, its result. Being a row, a job outlives the process: pending ones (and any a killed
server left running) are taken up again when the server starts.

    pending  waiting (``not_before``: after a failed attempt, not before this time)
    running  an attempt is under way
    done     ``result`` holds the validated JSON
    failed   ``max_attempts`` attempts failed; ``error_code`` says how the last one did
    skipped  the call has no words to read
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Float, ForeignKey, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from rejoinder.store.db import Store
from rejoinder.store.models import Base, TurnRow

PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"


class AnalyticsRow(Base):
    __tablename__ = "call_analytics"

    call_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # started so far
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error_code: Mapped[str | None] = mapped_column(String(64))  # a code, never a text
    model: Mapped[str | None] = mapped_column(String(100))  # the LLM that answered
    duration_ms: Mapped[float | None] = mapped_column(Float)  # of the attempt that succeeded
    result: Mapped[str | None] = mapped_column(Text)  # JSON


_TABLE: Any = AnalyticsRow.__table__


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite keeps no zone; all is UTC
        value = value.replace(tzinfo=UTC)
    return value


def _insert(dialect: str) -> Any:
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        return sqlite_insert
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    return pg_insert


class AnalyticsJobs:
    """The job rows of one store. Every method is one transaction."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(self, call_id: str, now: datetime) -> None:
        """A pending job for the call (none if it has one already)."""
        ins = _insert(self.store.dialect)
        async with self.store.engine.begin() as conn:
            await conn.execute(ins(AnalyticsRow).values(
                call_id=call_id, status=PENDING, attempts=0, created_at=now, updated_at=now,
            ).on_conflict_do_nothing(index_elements=["call_id"]))

    async def recover(self, max_attempts: int, now: datetime) -> int:
        """Jobs a stopped server left running: pending again, or failed when that was their
        last attempt. Returns how many are pending."""
        async with self.store.engine.begin() as conn:
            await conn.execute(update(AnalyticsRow).where(
                AnalyticsRow.status == RUNNING, AnalyticsRow.attempts >= max_attempts).values(
                status=FAILED, error_code="interrupted", updated_at=now))
            await conn.execute(update(AnalyticsRow).where(
                AnalyticsRow.status == RUNNING).values(status=PENDING, updated_at=now))
            rows = await conn.execute(select(AnalyticsRow.call_id).where(
                AnalyticsRow.status == PENDING))
            return len(rows.all())

    async def due(self, now: datetime, limit: int) -> tuple[list[str], datetime | None]:
        """Up to ``limit`` pending jobs that may run now, oldest first, and when the next
        one that may not yet will be due (None: none waits)."""
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(select(AnalyticsRow.call_id, AnalyticsRow.not_before)
                                       .where(AnalyticsRow.status == PENDING)
                                       .order_by(AnalyticsRow.created_at))).all()
        ready: list[str] = []
        later: datetime | None = None
        for call_id, not_before in rows:
            at = _utc(not_before)
            if at is None or at <= now:
                if len(ready) < limit:
                    ready.append(call_id)
            elif later is None or at < later:
                later = at
        return ready, later

    async def claim(self, call_id: str, now: datetime) -> int | None:
        """Start an attempt: the job's attempt number, or None if it is not pending."""
        async with self.store.engine.begin() as conn:
            changed = await conn.execute(update(AnalyticsRow).where(
                AnalyticsRow.call_id == call_id, AnalyticsRow.status == PENDING).values(
                status=RUNNING, attempts=AnalyticsRow.attempts + 1, updated_at=now))
            if not changed.rowcount:
                return None
            attempts = await conn.scalar(select(AnalyticsRow.attempts).where(
                AnalyticsRow.call_id == call_id))
            return int(attempts or 0)

    async def transcript(self, call_id: str) -> list[tuple[str, str]]:
        """The call's turns as stored (redacted): (the caller's words, the agent's)."""
        async with self.store.engine.connect() as conn:
            rows = await conn.execute(select(TurnRow.user_text, TurnRow.agent_text).where(
                TurnRow.call_id == call_id).order_by(TurnRow.seq))
            return [(u or "", a or "") for u, a in rows.all()]

    async def finish(self, call_id: str, now: datetime, *, status: str,
                     result: dict[str, Any] | None = None, model: str | None = None,
                     duration_ms: float | None = None, error_code: str | None = None,
                     not_before: datetime | None = None) -> None:
        async with self.store.engine.begin() as conn:
            await conn.execute(update(AnalyticsRow).where(
                AnalyticsRow.call_id == call_id).values(
                status=status, updated_at=now, error_code=error_code, model=model,
                duration_ms=duration_ms, not_before=not_before,
                result=None if result is None else json.dumps(result, separators=(",", ":"))))

    async def get(self, call_id: str) -> dict[str, Any] | None:
        """The job as the API shows it, or None when the call has none."""
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(select(_TABLE).where(
                AnalyticsRow.call_id == call_id))).mappings().first()
        if row is None:
            return None
        updated = _utc(row["updated_at"])
        return {
            "status": row["status"],
            "attempts": row["attempts"],
            "error_code": row["error_code"],
            "model": row["model"],
            "duration_ms": row["duration_ms"],
            "updated_at": None if updated is None else updated.isoformat(),
            "result": None if row["result"] is None else json.loads(row["result"]),
        }


def api_view(job: dict[str, Any] | None) -> dict[str, Any]:
    """A call record's analytics keys: ``analytics`` (the result; null until done),
    ``analytics_status`` (null: no job, e.g. while the call lasts) and ``analytics_job``."""
    if job is None:
        return {"analytics": None, "analytics_status": None, "analytics_job": None}
    return {"analytics": job.get("result"), "analytics_status": job.get("status"),
            "analytics_job": {k: v for k, v in job.items() if k not in ("result", "status")}}
