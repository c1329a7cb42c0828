"""turns.caller_v2v_ms: the voice-to-voice latency the caller measured

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("turns", sa.Column("caller_v2v_ms", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:  # SQLite rebuilds the table
        batch.drop_column("caller_v2v_ms")
