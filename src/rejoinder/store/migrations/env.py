"""Alembic environment. The store runs the migrations itself at start
(:meth:`rejoinder.store.db.Store.migrate`), handing over its own connection."""

from __future__ import annotations

from alembic import context

from rejoinder.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the call store applies its migrations itself, at server start")
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
