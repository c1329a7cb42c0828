"""Standard-library logging with the call id carried in a ContextVar.

Personal data (transcripts, replies) never goes into log lines; it travels only
to the caller over the call's own event channel. In depth, the handler that
:func:`setup_logging` installs redacts every message, every string value of
``extra={"record": {...}}`` and every traceback (:mod:`rejoinder.core.redact`), so a
line that carries a card number or an email by mistake still does not write it out. The
call id (a server-generated hex string) is left as it is, so records can still be joined:
it travels in its own field (``call_id``), never in a message, where redaction would take
its digits for a number. Outside a call's own tasks, give it with ``extra={"call_id": id}``.
"""

from __future__ import annotations

import contextvars
import json
import logging
from typing import Any

from rejoinder.core.redact import redact

call_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("call_id", default="-")


class _CallIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(getattr(record, "call_id", None), str):  # not given in ``extra``
            record.call_id = call_id_var.get()
        return True


class RedactFilter(logging.Filter):
    """Replaces personal data in a record's message and ``record`` extra (never drops it).

    Most lines hold nothing to redact: :func:`redact` answers those after one quick test
    (a few microseconds), and the record is left untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad arguments: the handler reports it when emitting
            message = ""
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        extra = getattr(record, "record", None)
        if isinstance(extra, dict):
            changed: dict[str, str] = {}
            for key, value in extra.items():
                if isinstance(value, str) and key != "call_id":
                    text = redact(value)
                    if text != value:
                        changed[key] = text
            if changed:
                record.record = {**extra, **changed}  # a copy: the caller's dict stays whole
        return True


class _Redacting(logging.Formatter):
    """Tracebacks and stacks redacted too: an exception's message may quote what failed."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's name)
        return redact(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return redact(super().formatStack(stack_info))


class JsonFormatter(_Redacting):
    """One JSON object a line; ``extra={"record": {...}}`` is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "call_id": getattr(record, "call_id", "-"),
            "msg": record.getMessage(),
        }
        extra = getattr(record, "record", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"))


def setup_logging(level: str = "info", json_lines: bool = True) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_CallIdFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(
        JsonFormatter() if json_lines
        else _Redacting("%(asctime)s %(levelname)s %(name)s [%(call_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
