"""The salon's appointment book: services, staff, slots and bookings in one SQLite file.

Plain ``sqlite3`` from the standard library, no ORM: five short transactions need none, and
``BEGIN IMMEDIATE`` (one writer at a time, across threads and processes) is exactly the
transaction the no-double-booking rule rests on.

Double booking is impossible twice over: a booking is made inside one ``BEGIN IMMEDIATE``
transaction that checks the slot is free, and a partial unique index (one ``booked`` row per
slot) refuses a second one even from a writer that skipped the check.

A reference is ``BK-<yy><MON><dd>-<nnn>`` (``BK-26DEC06-003``): the day the booking was made
and its sequence on that day, so the same book made the same way gives the same references.
The month is letters on purpose: a reference of seven digits or more in a row would be
redacted as a number before the LLM reads it, and the agent could not read it back.
A rescheduled booking keeps its reference (the caller already wrote it down).

Every function here is synchronous and opens its own connection: call them from a worker
thread (``asyncio.to_thread``), any number at once.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
SLOT_MINUTES = 30
OPEN_HOUR, CLOSE_HOUR = 9, 17  # the last slot starts at 16:30
OPEN_WEEKDAYS = frozenset(range(6))  # Monday to Saturday
HORIZON_DAYS = 28  # slots exist this far ahead of today

# The seed: (service, minutes), (staff, services they do). Every service fits one slot.
SERVICES = (("haircut", 30), ("beard trim", 30), ("colour", 30), ("manicure", 30),
            ("massage", 30))
STAFF = (("Ana", ("haircut", "colour", "massage")),
         ("Ben", ("haircut", "beard trim")),
         ("Chloe", ("colour", "manicure", "massage")))

SCHEMA = """
CREATE TABLE IF NOT EXISTS services (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, minutes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS staff (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS staff_services (
    staff_id INTEGER NOT NULL REFERENCES staff(id),
    service_id INTEGER NOT NULL REFERENCES services(id),
    PRIMARY KEY (staff_id, service_id));
CREATE TABLE IF NOT EXISTS slots (
    id INTEGER PRIMARY KEY, staff_id INTEGER NOT NULL REFERENCES staff(id),
    start TEXT NOT NULL, UNIQUE (staff_id, start));
CREATE TABLE IF NOT EXISTS bookings (
    reference TEXT PRIMARY KEY,
    made_on TEXT NOT NULL,
    seq INTEGER NOT NULL,
    slot_id INTEGER NOT NULL REFERENCES slots(id),
    service_id INTEGER NOT NULL REFERENCES services(id),
    name TEXT NOT NULL,
    phone TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'booked' CHECK (status IN ('booked', 'cancelled')),
    UNIQUE (made_on, seq));
CREATE UNIQUE INDEX IF NOT EXISTS one_booking_per_slot ON bookings(slot_id)
    WHERE status = 'booked';
"""

Now = Callable[[], dt.datetime]


class BookingError(ValueError):
    """A request the book cannot take (an unknown service, a time with no slot, ...).
    The message is for the LLM to explain to the caller; it holds no personal data."""


@dataclass(frozen=True)
class Slot:
    start: dt.datetime
    staff: str

    def as_dict(self) -> dict[str, str]:
        return {"day": f"{self.start:%Y-%m-%d}", "time": f"{self.start:%H:%M}",
                "staff": self.staff, "when": spoken_time(self.start)}


def reference_for(made_on: dt.date, seq: int) -> str:
    return f"BK-{made_on:%y}{MONTHS[made_on.month - 1]}{made_on:%d}-{seq:03d}"


_WORD_DIGITS = {"zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3",
                "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9"}
_REFERENCE = re.compile(r"BK(\d{2})([A-Z]{3})[A-Z]*(\d{1,2})(\d{3})")


def normalize_reference(text: str) -> str:
    """A reference as written or as a recogniser heard it read out ("bk 26 december 6
    zero zero three", "B.K. 26DEC06-003") in its canonical form; ``BookingError`` if none."""
    words = re.findall(r"[A-Za-z]+|\d+", text)
    squashed = "".join(_WORD_DIGITS.get(w.lower(), w) for w in words).upper()
    match = _REFERENCE.search(squashed.replace("BEEKAY", "BK"))
    if match is None or match[2] not in MONTHS:
        raise BookingError("that is not a booking reference (they look like BK-26DEC06-003)")
    year, month, day, seq = match.groups()
    try:
        made_on = dt.date(2000 + int(year), MONTHS.index(month) + 1, int(day))
    except ValueError:
        raise BookingError("that booking reference has no valid date in it") from None
    return reference_for(made_on, int(seq))


def spoken_time(start: dt.datetime) -> str:
    """How the agent says a slot: "Monday December 7 at 10:30 AM"."""
    hour = start.hour % 12 or 12
    return f"{start:%A %B} {start.day} at {hour}:{start:%M} {'AM' if start.hour < 12 else 'PM'}"


def parse_day(text: str, today: dt.date) -> dt.date:
    """A day as a caller or an LLM names it: ``2026-12-07``, "today", "tomorrow", "monday"
    (the next one, today included), "next monday" (the one after that)."""
    words = text.strip().lower().split()
    if not words:
        raise BookingError("which day? (a date like 2026-12-07, today, tomorrow or a weekday)")
    if words == ["today"]:
        return today
    if words == ["tomorrow"]:
        return today + dt.timedelta(days=1)
    weekday = words[-1].removesuffix("s")
    names = [d.lower() for d in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
                                 "Saturday", "Sunday")]
    if weekday in names and len(words) <= 2 and words[0] in (weekday, "next", "this", "on"):
        ahead = (names.index(weekday) - today.weekday()) % 7
        if words[0] == "next" and ahead == 0:
            ahead = 7
        return today + dt.timedelta(days=ahead)
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise BookingError(f"{text!r} is not a day I understand (use a date like "
                           "2026-12-07, today, tomorrow or a weekday)") from None


_CLOCK = re.compile(r"(\d{1,2})(?:[:.h](\d{2}))?\s*(?:o'?clock)?\s*([ap])?\.?\s*(?:m\.?)?")


def parse_time(text: str) -> dt.time:
    """A time of day as a caller or an LLM says it: "14:00", "2 p.m.", "2pm", "4.30", "noon";
    an hour from 1 to 7 without a.m. or p.m. is the afternoon (the salon's hours)."""
    t = text.strip().lower()
    if t in ("noon", "midday", "12 noon"):
        return dt.time(12)
    match = _CLOCK.fullmatch(t)
    try:
        if match is None:
            raise ValueError(text)
        hour, minute = int(match[1]), int(match[2] or 0)
        if match[3] == "p" and hour < 12:
            hour += 12
        elif match[3] == "a" and hour == 12:
            hour = 0
        elif match[3] is None and 1 <= hour <= 7:
            hour += 12
        return dt.time(hour, minute)
    except ValueError:
        raise BookingError(f"{text!r} is not a time of day (say it like 14:30 or 2:30 pm)"
                           ) from None


class BookingDB:
    """The appointment book in the SQLite file at ``path``, created and seeded on first use.
    ``now`` gives the local wall time (tests pass a fixed one)."""

    def __init__(self, path: str | Path, now: Now = dt.datetime.now) -> None:
        self.path = Path(path)
        self.now = now
        self._ready_through: dt.date | None = None
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed when the block ends, rolled back
        when it raises."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        self._ensure_ready()
        return self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    def _ensure_ready(self) -> None:
        """Create the schema and seed it once, and keep slots ``HORIZON_DAYS`` ahead."""
        today = self.now().date()
        if self._ready_through == today:
            return
        with self._lock:
            if self._ready_through == today:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._open()
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.executescript(SCHEMA)
                conn.execute("BEGIN IMMEDIATE")
                self._seed(conn, today)
                conn.execute("COMMIT")
            finally:
                conn.close()
            self._ready_through = today

    @staticmethod
    def _seed(conn: sqlite3.Connection, today: dt.date) -> None:
        conn.executemany("INSERT OR IGNORE INTO services (name, minutes) VALUES (?, ?)",
                         SERVICES)
        conn.executemany("INSERT OR IGNORE INTO staff (name) VALUES (?)",
                         [(name,) for name, _ in STAFF])
        conn.executemany(
            "INSERT OR IGNORE INTO staff_services (staff_id, service_id) SELECT staff.id,"
            " services.id FROM staff, services WHERE staff.name = ? AND services.name = ?",
            [(name, service) for name, services in STAFF for service in services])
        starts = []
        for offset in range(HORIZON_DAYS):
            day = today + dt.timedelta(days=offset)
            if day.weekday() not in OPEN_WEEKDAYS:
                continue
            t = dt.datetime.combine(day, dt.time(OPEN_HOUR))
            while t.hour < CLOSE_HOUR:
                starts.append(t.strftime("%Y-%m-%dT%H:%M"))
                t += dt.timedelta(minutes=SLOT_MINUTES)
        conn.executemany("INSERT OR IGNORE INTO slots (staff_id, start) SELECT id, ? FROM staff",
                         [(s,) for s in starts])

    # -- queries --------------------------------------------------------------------------

    def services(self) -> list[str]:
        with self._read() as conn:
            return [r["name"] for r in conn.execute("SELECT name FROM services ORDER BY id")]

    def _service_id(self, conn: sqlite3.Connection, service: str) -> int:
        wanted = " ".join(service.lower().replace("color", "colour").split())
        rows = conn.execute("SELECT id, name FROM services ORDER BY id").fetchall()
        for row in rows:  # "haircuts", "a haircut", "colour appointment" all mean one
            name = row["name"]
            if wanted == name or name in wanted or wanted.rstrip("s") == name:
                return int(row["id"])
        raise BookingError(f"we do not offer {service!r}; we offer "
                           + ", ".join(r["name"] for r in rows))

    def _free(self, conn: sqlite3.Connection, service_id: int, first: dt.date,
              last: dt.date, staff: str | None, at: dt.time | None = None
              ) -> list[sqlite3.Row]:
        """Free slots from day ``first`` to ``last`` (at ``at`` only, if given), not past."""
        sql = ("SELECT slots.id, slots.start, staff.name FROM slots"
               " JOIN staff ON staff.id = slots.staff_id"
               " JOIN staff_services ss ON ss.staff_id = staff.id AND ss.service_id = ?"
               " WHERE slots.start >= ? AND slots.start < ? AND slots.start > ?"
               " AND NOT EXISTS (SELECT 1 FROM bookings b WHERE b.slot_id = slots.id"
               " AND b.status = 'booked')")
        params: list[Any] = [service_id, f"{first:%Y-%m-%d}T",
                             f"{last + dt.timedelta(days=1):%Y-%m-%d}T",
                             self.now().strftime("%Y-%m-%dT%H:%M")]
        if staff:
            sql += " AND lower(staff.name) = lower(?)"
            params.append(staff.strip())
        if at is not None:
            sql += " AND substr(slots.start, 12) = ?"
            params.append(f"{at:%H:%M}")
        return conn.execute(sql + " ORDER BY slots.start, staff.id", params).fetchall()

    @staticmethod
    def _slots(rows: Sequence[sqlite3.Row], limit: int) -> list[Slot]:
        """At most ``limit`` slots, one per start time (the first stylist free then)."""
        slots: list[Slot] = []
        for row in rows:
            start = dt.datetime.fromisoformat(row["start"])
            if slots and slots[-1].start == start:
                continue
            slots.append(Slot(start, row["name"]))
            if len(slots) == limit:
                break
        return slots

    def _days(self, day: str) -> tuple[dt.date, dt.date]:
        """The days to search: the one named, or (none named) the next ``HORIZON_DAYS``."""
        today = self.now().date()
        if not day.strip():
            return today, today + dt.timedelta(days=HORIZON_DAYS - 1)
        when = parse_day(day, today)
        return when, when

    def find_slots(self, service: str, day: str = "", staff: str | None = None,
                   limit: int = 5) -> list[Slot]:
        """Free slots for ``service`` on ``day`` (the soonest ones if no day is named), with
        ``staff`` if named, earliest first, one per start time."""
        first, last = self._days(day)
        with self._read() as conn:
            rows = self._free(conn, self._service_id(conn, service), first, last, staff)
        return self._slots(rows, limit)

    def _take(self, conn: sqlite3.Connection, service_id: int, day: str, time: str,
              staff: str | None) -> sqlite3.Row | list[dict[str, str]]:
        """The free slot at ``day`` and ``time``, or (none free then) up to three other free
        times that day, or the soonest ones (no day named)."""
        first, last = self._days(day)
        at = parse_time(time) if time.strip() else None
        if day.strip() and at is not None:
            free = self._free(conn, service_id, first, last, staff, at)
            if free:
                return free[0]
        others = self._free(conn, service_id, first, last, staff)
        return [s.as_dict() for s in self._slots(others, 3)]

    def book(self, service: str, day: str, time: str, name: str = "", phone: str = "",
             staff: str | None = None) -> dict[str, Any]:
        """Book the slot at ``day`` and ``time``, in one transaction, so two callers never
        both get it. A time that is not free is a result (``booked: false``, with other free
        times), not an error: the agent offers those."""
        if not name.strip():
            raise BookingError("the booking needs the caller's name: ask for it first")
        made_on = self.now().date()
        with self._write() as conn:
            service_id = self._service_id(conn, service)
            slot = self._take(conn, service_id, day, time, staff)
            if isinstance(slot, list):
                return {"booked": False, "reason": "that time is not free", "free": slot}
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM bookings WHERE"
                               " made_on = ?", (made_on.isoformat(),)).fetchone()[0]
            reference = reference_for(made_on, seq)
            conn.execute("INSERT INTO bookings (reference, made_on, seq, slot_id, service_id,"
                         " name, phone) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (reference, made_on.isoformat(), seq, slot["id"], service_id,
                          name.strip(), phone.strip()))
            return {"booked": True, "reference": reference, **self._describe(conn, reference)}

    def reschedule(self, reference: str, day: str = "", time: str = "",
                   staff: str | None = None) -> dict[str, Any]:
        """Move a booking to the slot at ``day`` and ``time`` (same service, same reference;
        a day alone keeps the time, a time alone keeps the day)."""
        ref = normalize_reference(reference)
        with self._write() as conn:
            row = self._booking(conn, ref)
            current = dt.datetime.fromisoformat(conn.execute(
                "SELECT start FROM slots WHERE id = ?", (row["slot_id"],)).fetchone()[0])
            slot = self._take(conn, row["service_id"], day or f"{current:%Y-%m-%d}",
                              time or f"{current:%H:%M}", staff)
            if isinstance(slot, list):
                return {"rescheduled": False, "reason": "that time is not free", "free": slot}
            conn.execute("UPDATE bookings SET slot_id = ? WHERE reference = ?",
                         (slot["id"], ref))
            return {"rescheduled": True, "reference": ref, **self._describe(conn, ref)}

    def cancel(self, reference: str) -> dict[str, Any]:
        ref = normalize_reference(reference)
        with self._write() as conn:
            self._booking(conn, ref)
            conn.execute("UPDATE bookings SET status = 'cancelled' WHERE reference = ?", (ref,))
            return {"cancelled": True, "reference": ref, **self._describe(conn, ref)}

    def lookup(self, reference: str = "", phone: str = "", name: str = ""
               ) -> list[dict[str, Any]]:
        """A booking by its reference, or the upcoming ones made with ``phone`` (its last
        seven digits) or under ``name``."""
        with self._read() as conn:
            if reference.strip():
                refs: Sequence[str] = [self._booking(conn, normalize_reference(reference),
                                                     active=False)["reference"]]
            elif phone.strip() or name.strip():
                digits = re.sub(r"\D", "", phone)[-7:]
                wanted = " ".join(name.lower().split())
                refs = [r["reference"] for r in conn.execute(
                    "SELECT reference, phone, name FROM bookings JOIN slots ON"
                    " slots.id = slot_id WHERE status = 'booked' AND slots.start > ?"
                    " ORDER BY slots.start", (self.now().strftime("%Y-%m-%dT%H:%M"),))
                    if (digits and re.sub(r"\D", "", r["phone"]).endswith(digits))
                    or (wanted and " ".join(r["name"].lower().split()) == wanted)]
            else:
                raise BookingError("give the booking reference, or the name or phone number"
                                   " it was made with")
            return [{"reference": ref, **self._describe(conn, ref)} for ref in refs]

    def _booking(self, conn: sqlite3.Connection, reference: str,
                 active: bool = True) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM bookings WHERE reference = ?",
                           (reference,)).fetchone()
        if row is None:
            raise BookingError(f"no booking has the reference {reference}")
        if active and row["status"] != "booked":
            raise BookingError(f"booking {reference} was cancelled")
        return row  # type: ignore[no-any-return]

    @staticmethod
    def _describe(conn: sqlite3.Connection, reference: str) -> dict[str, Any]:
        row = conn.execute(
            "SELECT services.name AS service, staff.name AS staff, slots.start, status,"
            " bookings.name FROM bookings JOIN slots ON slots.id = bookings.slot_id"
            " JOIN staff ON staff.id = slots.staff_id"
            " JOIN services ON services.id = bookings.service_id WHERE reference = ?",
            (reference,)).fetchone()
        start = dt.datetime.fromisoformat(row["start"])
        return {"service": row["service"], "staff": row["staff"], "day": f"{start:%Y-%m-%d}",
                "time": f"{start:%H:%M}", "when": spoken_time(start), "status": row["status"],
                "name": row["name"]}

    def count(self, status: str = "booked") -> int:
        """Bookings in ``status`` (for tests and the example's README)."""
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM bookings WHERE status = ?",
                                    (status,)).fetchone()[0])
