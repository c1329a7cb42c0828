"""Call records in a real database: SQLite by default, PostgreSQL by URL.

    Store     the database (``db.py``): migrate, write, read, delete, prune
    Recorder  the bounded queue and its writer task; one ``CallLog`` per call, fed by
              the conversation's events (``recorder.py``)
    models    the tables; ``migrations/`` the Alembic revisions that build them
"""

from rejoinder.store.db import (
    CallEnd,
    CallStart,
    GuardrailFlag,
    Store,
    ToolCallRecord,
    TurnMeasured,
    TurnRecord,
    database_url,
    default_sqlite_path,
)
from rejoinder.store.recorder import CallLog, Recorder, open_recorder

__all__ = ["CallEnd", "CallLog", "CallStart", "GuardrailFlag", "Recorder", "Store",
           "ToolCallRecord", "TurnMeasured", "TurnRecord", "database_url", "default_sqlite_path",
           "open_recorder"]
