"""calls, turns and tool_calls

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("twilio_call_sid", sa.String(64), nullable=True),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index("ix_calls_twilio_call_sid", "calls", ["twilio_call_sid"])
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("speech_end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("user_text", sa.Text(), nullable=False),
        sa.Column("agent_text", sa.Text(), nullable=False),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("heard_text", sa.Text(), nullable=True),
        sa.Column("speculation", sa.String(16), nullable=True),
        sa.Column("tts_cached", sa.Boolean(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("vad_end_ms", sa.Float(), nullable=True),
        sa.Column("turn_confirmed_ms", sa.Float(), nullable=True),
        sa.Column("stt_final_ms", sa.Float(), nullable=True),
        sa.Column("llm_first_token_ms", sa.Float(), nullable=True),
        sa.Column("first_clause_ms", sa.Float(), nullable=True),
        sa.Column("tts_first_audio_ms", sa.Float(), nullable=True),
        sa.Column("first_audio_sent_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["call_id"], ["calls.id"], ondelete="CASCADE",
                                name="fk_turns_call_id_calls"),
        sa.PrimaryKeyConstraint("id", name="pk_turns"),
        sa.UniqueConstraint("call_id", "seq", name="uq_turns_call_id"),
    )
    op.create_index("ix_turns_call_id", "turns", ["call_id"])
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("call_id", sa.String(64), nullable=False),
        sa.Column("turn_seq", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(["call_id"], ["calls.id"], ondelete="CASCADE",
                                name="fk_tool_calls_call_id_calls"),
        sa.PrimaryKeyConstraint("id", name="pk_tool_calls"),
    )
    op.create_index("ix_tool_calls_call_turn", "tool_calls", ["call_id", "turn_seq"])


def downgrade() -> None:
    op.drop_table("tool_calls")
    op.drop_table("turns")
    op.drop_table("calls")
