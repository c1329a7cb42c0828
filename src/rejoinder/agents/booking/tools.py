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
from collections.abc import Callable
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


async def _run(fn: Callable[..., T], *args: Any) -> T | dict[str, str]:
    try:
        return await asyncio.to_thread(fn, *args)
    except BookingError as exc:
        return {"error": str(exc)}


Service = Annotated[str, Field(description="the service: haircut, beard trim, colour, "
                                           "blow-dry or manicure")]
Start = Annotated[str, Field(description="the slot's start exactly as find_slots gave it, "
                                         "e.g. 2026-12-07T10:30")]
Reference = Annotated[str, Field(description="the booking reference, e.g. BK-26DEC06-003")]
Staff = Annotated[str | None, Field(description="a stylist's name if the caller asked for "
                                                "one (Ana, Ben or Chloe)")]


@tool(side_effects=False, timeout_s=3.0)
async def find_slots(service: Service,
                     day: Annotated[str, Field(description="YYYY-MM-DD, today, tomorrow or"
                                                           " a weekday like monday")],
                     staff: Staff = None) -> list[dict[str, str]] | dict[str, str]:
    """Free appointment times for a service (haircut, beard trim, colour, blow-dry or
    manicure) on a day (YYYY-MM-DD, today, tomorrow or a weekday), optionally with one
    stylist (Ana, Ben or Chloe). Use it before booking or rescheduling."""
    slots = await _run(database().find_slots, service, day, staff)
    return slots if isinstance(slots, dict) else [s.as_dict() for s in slots]


@tool(side_effects=True, timeout_s=5.0)
async def book(service: Service, start: Start,
               name: Annotated[str, Field(description="the caller's name")],
               phone: Annotated[str, Field(description="the caller's phone number, if"
                                                       " given")] = "",
               staff: Staff = None) -> dict[str, Any]:
    """Book a free slot for the caller: start exactly as find_slots gave it, the caller's
    name, their phone number if given. Returns the booking reference to read back."""
    return await _run(database().book, service, start, name, phone, staff)


@tool(side_effects=True, timeout_s=5.0)
async def reschedule(reference: Reference, start: Start,
                     staff: Staff = None) -> dict[str, Any]:
    """Move a booking (its reference, like BK-26DEC06-003) to another free slot from
    find_slots; the reference stays the same."""
    return await _run(database().reschedule, reference, start, staff)


@tool(side_effects=True, timeout_s=5.0)
async def cancel(reference: Reference) -> dict[str, Any]:
    """Cancel a booking by its reference (like BK-26DEC06-003)."""
    return await _run(database().cancel, reference)


@tool(side_effects=False, timeout_s=3.0)
async def lookup_booking(reference: Annotated[str, Field(description="the booking reference,"
                                                                     " if the caller has it")]
                         = "",
                         phone: Annotated[str, Field(description="the phone number the"
                                                                 " booking was made with")]
                         = "") -> list[dict[str, Any]] | dict[str, str]:
    """Find a caller's bookings by reference or by phone number."""
    return await _run(database().lookup, reference, phone)


TOOLS = [find_slots, book, reschedule, cancel, lookup_booking]
