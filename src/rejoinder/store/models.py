"""The tables of the call records. Changes to them go through a new Alembic migration
(``migrations/versions/``) so that a server upgrade keeps every record it holds.

    calls       one row per call: id, transport, start and end, agent, outcome
    turns       one row per finished turn: transcripts (redacted), interruption, stage times
    tool_calls  one row per tool the agent called in a turn (name, redacted arguments, time, status)
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from rejoinder.observability.trace import STAGES

#: The stages of a turn whose times (ms after the caller's end of speech) are columns:
#: every stage of the trace but the end of speech itself, which they count from.
STAGE_COLUMNS = tuple(s for s in STAGES if s != "speech_end")

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


class CallRow(Base):
    __tablename__ = "calls"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    transport: Mapped[str] = mapped_column(String(16))  # "webrtc"; later "twilio"
    twilio_call_sid: Mapped[str | None] = mapped_column(String(64), index=True)
    agent: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # "ended" (the caller hung up), "failed" (the connection failed), "server_stopped";
    # NULL while the call lasts, and for a call the server did not live to see end.
    outcome: Mapped[str | None] = mapped_column(String(32))


class TurnRow(Base):
    __tablename__ = "turns"
    __table_args__ = (UniqueConstraint("call_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)  # order of the records within the call
    turn: Mapped[int] = mapped_column(Integer)  # the engine's turn number
    outcome: Mapped[str] = mapped_column(String(16))  # completed | interrupted | failed | ...
    speech_end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    user_text: Mapped[str] = mapped_column(Text, default="")   # redacted
    agent_text: Mapped[str] = mapped_column(Text, default="")  # what was spoken, redacted
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    heard_text: Mapped[str | None] = mapped_column(Text)  # of an interrupted reply, redacted
    speculation: Mapped[str | None] = mapped_column(String(16))  # committed | restarted
    tts_cached: Mapped[bool | None] = mapped_column(Boolean)
    error_code: Mapped[str | None] = mapped_column(String(64))
    vad_end_ms: Mapped[float | None] = mapped_column(Float)
    turn_confirmed_ms: Mapped[float | None] = mapped_column(Float)
    stt_final_ms: Mapped[float | None] = mapped_column(Float)
    llm_first_token_ms: Mapped[float | None] = mapped_column(Float)
    first_clause_ms: Mapped[float | None] = mapped_column(Float)
    tts_first_audio_ms: Mapped[float | None] = mapped_column(Float)
    first_audio_sent_ms: Mapped[float | None] = mapped_column(Float)
    # Voice-to-voice latency as the caller measured it (their "measured" message); NULL
    # when the caller sent none (revision 0002).
    caller_v2v_ms: Mapped[float | None] = mapped_column(Float)
    # Caller speech over the agent until its audio was held (the turn's first hold, ms at
    # the server), NULL when the caller did not speak over this reply (revision 0004).
    barge_in_stop_ms: Mapped[float | None] = mapped_column(Float)
    # What the guardrails blocked or flagged in this turn: a JSON list of {"action",
    # "rule"}, NULL when nothing (revision 0004).
    guardrails: Mapped[str | None] = mapped_column(Text)


class ToolCallRow(Base):
    __tablename__ = "tool_calls"
    __table_args__ = (Index("ix_tool_calls_call_turn", "call_id", "turn_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(String(64), ForeignKey("calls.id", ondelete="CASCADE"))
    turn_seq: Mapped[int] = mapped_column(Integer)  # turns.seq of the turn that called it
    name: Mapped[str] = mapped_column(String(200))
    arguments: Mapped[str] = mapped_column(Text, default="")  # JSON, redacted
    duration_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(32))  # ok | error | timeout | cancelled
