"""turns.barge_in_stop_ms and turns.guardrails: the barge-in stop time and what the
guardrails blocked or flagged in a turn

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("turns", sa.Column("barge_in_stop_ms", sa.Float(), nullable=True))
    op.add_column("turns", sa.Column("guardrails", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:  # SQLite rebuilds the table
        batch.drop_column("guardrails")
        batch.drop_column("barge_in_stop_ms")
