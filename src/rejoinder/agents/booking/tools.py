"""The booking agent's tools over the appointment book (:mod:`.db`).

``find_slots`` and ``lookup_booking`` only read, so they may be prefetched while the caller
is still speaking; ``book``, ``reschedule`` and ``cancel`` change the book and run only once
the turn is confirmed and the LLM asks for them.

A request the book cannot take (an unknown service, a reference that does not exist, a
time already taken) comes back as a result with an ``error`` (or ``booked: false``), not as
a failed tool: the LLM can then ask the caller again or offer other times, where a failure
would only get an apology.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field

from rejoinder.agents.booking.db import BookingDB, BookingError
from rejoinder.tools import tool

T = TypeVar("T")

_db: BookingDB | None = None


def default_path() -> Path:
    """``booking.db`` in the data directory, next to the call records."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rejoinder" / "booking.db"


def use_database(db: BookingDB | str | Path) -> BookingDB:
    """Point the tools at another appointment book (a path or an open :class:`BookingDB`)."""
    global _db
    _db = db if isinstance(db, BookingDB) else BookingDB(db)
    return _db


def database() -> BookingDB:
    """The appointment book the tools use (created under the data directory on first use)."""
    return _db if _db is not None else use_database(default_path())


# A worker thread: a write may wait for another writer's transaction (SQLite's lock).
_offload: Callable[..., Awaitable[Any]] = asyncio.to_thread


async def _run(fn: Callable[..., T], *args: Any) -> T | dict[str, str]:
    try:
        return await _offload(fn, *args)  # type: ignore[no-any-return]
    except BookingError as exc:
        return {"error": str(exc)}


Service = Annotated[str, Field(description="the service: haircut, beard trim, colour, "
                                           "manicure or massage")]
Day = Annotated[str, Field(description="the day as the caller says it: today, tomorrow, a "
                                       "weekday, or YYYY-MM-DD")]
Time = Annotated[str, Field(description="the time of day, 24-hour HH:MM")]
Reference = Annotated[str, Field(description="the booking reference, like BK-26DEC06-003")]
Name = Annotated[str, Field(description="the caller's full name")]
Staff = Annotated[str | None, Field(description="a stylist's name if the caller asked for "
                                                "one (Ana, Ben or Chloe)")]


@tool(side_effects=False, timeout_s=3.0)
async def find_slots(service: Service, day: Day = "",
                     staff: Staff = None) -> list[dict[str, str]] | dict[str, str]:
    """Find free appointment times for a service (haircut, beard trim, colour, manicure or
    massage) on a day (today, tomorrow, a weekday; none: the soonest), with one stylist
    (Ana, Ben or Chloe) if the caller asks."""
    slots = await _run(database().find_slots, service, day, staff)
    return slots if isinstance(slots, dict) else [s.as_dict() for s in slots]


@tool(side_effects=True, timeout_s=5.0)
async def book(service: Service, day: Day, time: Time, name: Name = "",
               phone: Annotated[str, Field(description="the caller's phone number, if"
                                                       " given")] = "",
               staff: Staff = None) -> dict[str, Any]:
    """Book an appointment for a service at a day and time (24-hour HH:MM) in the caller's
    name. Returns the booking reference to read back, or other free times."""
    return await _run(database().book, service, day, time, name, phone, staff)


@tool(side_effects=True, timeout_s=5.0)
async def reschedule(reference: Reference, day: Day = "", time: Time = "",
                     staff: Staff = None) -> dict[str, Any]:
    """Move an existing booking (its reference, like BK-26DEC06-003) to another day or
    time; the reference stays the same."""
    return await _run(database().reschedule, reference, day, time, staff)


@tool(side_effects=True, timeout_s=5.0)
async def cancel(reference: Reference) -> dict[str, Any]:
    """Cancel an existing booking by its reference (like BK-26DEC06-003)."""
    return await _run(database().cancel, reference)


@tool(side_effects=False, timeout_s=3.0)
async def lookup_booking(reference: Reference = "", name: Name = "",
                         phone: Annotated[str, Field(description="the phone number the"
                                                                 " booking was made with")]
                         = "") -> list[dict[str, Any]] | dict[str, str]:
    """Look up an existing booking by its reference, or the caller's name or phone number."""
    return await _run(database().lookup, reference, phone, name)


TOOLS = [find_slots, book, reschedule, cancel, lookup_booking]
