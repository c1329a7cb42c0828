"""The booking agent's appointment book and tools: booking, reading back, rescheduling,
cancelling and looking up against a real SQLite file; references deterministic; no slot
taken twice, however many callers try at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
from pathlib import Path

import pytest

from rejoinder.agents.booking import db as bookdb
from rejoinder.agents.booking.db import BookingDB, BookingError

# A Sunday evening: the first open day is Monday 7 December 2026.
NOW = dt.datetime(2026, 12, 6, 20, 15)
MONDAY = "2026-12-07"


def make_db(tmp_path: Path, name: str = "booking.db") -> BookingDB:
    return BookingDB(tmp_path / name, now=lambda: NOW)


def test_created_and_seeded_on_first_use(tmp_path: Path) -> None:
    book = make_db(tmp_path / "new" / "dir")
    assert book.services() == ["haircut", "beard trim", "colour", "manicure", "massage"]
    assert (tmp_path / "new" / "dir" / "booking.db").is_file()
    # Closed on Sundays; Monday opens at 9:00, one slot per stylist who does the service.
    assert book.find_slots("haircut", "today") == []
    slots = book.find_slots("haircut", "monday", limit=3)
    assert [s.as_dict() for s in slots] == [
        {"day": MONDAY, "time": "09:00", "staff": "Ana", "when": "Monday December 7 at 9:00 AM"},
        {"day": MONDAY, "time": "09:30", "staff": "Ana", "when": "Monday December 7 at 9:30 AM"},
        {"day": MONDAY, "time": "10:00", "staff": "Ana",
         "when": "Monday December 7 at 10:00 AM"}]
    assert book.find_slots("beard trim", limit=1) == book.find_slots("beard trim", "tomorrow",
                                                                     limit=1)  # the soonest
    assert [s.staff for s in book.find_slots("manicure", "2026-12-08", limit=2)] == \
        ["Chloe", "Chloe"]
    # Written as callers and LLMs write them.
    assert book.find_slots("Color", "this tuesday", limit=1)[0].start == \
        dt.datetime(2026, 12, 8, 9, 0)
    assert book.find_slots("haircuts", "next monday", limit=1)[0].start.day == 7


@pytest.mark.parametrize(("said", "hour", "minute"), [
    ("14:00", 14, 0), ("2 p.m.", 14, 0), ("2pm", 14, 0), ("4.30", 16, 30), ("3", 15, 0),
    ("10 a.m.", 10, 0), ("10", 10, 0), ("9:30 am", 9, 30), ("noon", 12, 0),
    ("12 pm", 12, 0), ("4 o'clock", 16, 0)])
def test_times_as_callers_say_them(said: str, hour: int, minute: int) -> None:
    assert bookdb.parse_time(said) == dt.time(hour, minute)


def test_book_read_back_reschedule_cancel_lookup(tmp_path: Path) -> None:
    book = make_db(tmp_path)
    made = book.book("a haircut", "monday", "10:30", "Dana Reyes", phone="+1 555 010 0199",
                     staff="ben")
    assert made == {"booked": True, "reference": "BK-26DEC06-001", "service": "haircut",
                    "staff": "Ben", "day": MONDAY, "time": "10:30",
                    "when": "Monday December 7 at 10:30 AM", "status": "booked",
                    "name": "Dana Reyes"}
    # The slot is gone for Ben, still there for Ana.
    monday = book.find_slots("haircut", MONDAY, limit=20)
    assert ("Ben", dt.datetime(2026, 12, 7, 10, 30)) not in [(s.staff, s.start) for s in monday]
    assert book.find_slots("haircut", "monday", staff="Ben", limit=4)[3].start.hour == 11

    # Read back as a recogniser writes it down, or found by phone or name.
    found = book.lookup("b k 26 december 6 zero zero one")
    assert [(f["reference"], f["day"], f["time"], f["status"]) for f in found] == \
        [("BK-26DEC06-001", MONDAY, "10:30", "booked")]
    assert [f["reference"] for f in book.lookup(phone="555-010-0199")] == ["BK-26DEC06-001"]
    assert [f["reference"] for f in book.lookup(name="dana  reyes")] == ["BK-26DEC06-001"]

    moved = book.reschedule("BK-26DEC06-001", "tuesday", "2 p.m.")
    assert moved["rescheduled"] is True and moved["reference"] == "BK-26DEC06-001"
    assert (moved["day"], moved["time"], moved["service"]) == ("2026-12-08", "14:00", "haircut")
    assert book.find_slots("haircut", MONDAY, staff="Ben", limit=4)[3].start.hour == 10
    later = book.reschedule("BK-26DEC06-001", time="16:00")  # a time alone keeps the day
    assert (later["day"], later["time"]) == ("2026-12-08", "16:00")

    gone = book.cancel("BK-26DEC06-001")
    assert gone["cancelled"] is True and gone["status"] == "cancelled"
    assert book.lookup(phone="5550100199") == []
    assert book.lookup("BK-26DEC06-001")[0]["status"] == "cancelled"
    with pytest.raises(BookingError, match="cancelled"):
        book.cancel("BK-26DEC06-001")
    assert book.count() == 0 and book.count("cancelled") == 1


def test_references_are_deterministic(tmp_path: Path) -> None:
    """The same bookings made the same day get the same references in any fresh book; the
    sequence is per day and never reuses a cancelled booking's number."""
    def run(book: BookingDB) -> list[str]:
        refs = [book.book("haircut", MONDAY, f"{h}:00", "A")["reference"] for h in (9, 10, 11)]
        book.cancel(refs[1])
        refs.append(book.book("colour", "2026-12-09", "09:00", "B")["reference"])
        return refs

    first = run(make_db(tmp_path, "one.db"))
    assert first == ["BK-26DEC06-001", "BK-26DEC06-002", "BK-26DEC06-003", "BK-26DEC06-004"]
    assert run(make_db(tmp_path, "two.db")) == first
    tomorrow = BookingDB(tmp_path / "one.db", now=lambda: NOW + dt.timedelta(days=1))
    assert tomorrow.book("haircut", "2026-12-08", "12:00", "C")["reference"] == "BK-26DEC07-001"


def test_references_survive_redaction() -> None:
    """The LLM sees tool results redacted like caller text: a reference must come through."""
    from rejoinder.core.redact import redact

    ref = bookdb.reference_for(dt.date(2026, 12, 6), 3)
    assert ref == "BK-26DEC06-003"
    assert redact(f"Your reference is {ref}.") == f"Your reference is {ref}."
    for heard in ("BK-26DEC06-003", "bk 26 dec 06 003", "B.K. 26 December 6, 003",
                  "b k two six december zero six zero zero three", "BK26DEC06003"):
        assert bookdb.normalize_reference(heard) == ref
    for bad in ("BK-26XYZ06-003", "twenty six", "BK-26FEB30-001"):
        with pytest.raises(BookingError):
            bookdb.normalize_reference(bad)


def test_taken_slot_is_a_result_with_other_times(tmp_path: Path) -> None:
    book = make_db(tmp_path)
    assert book.book("manicure", MONDAY, "09:00", "A")["booked"] is True  # Chloe's only
    again = book.book("manicure", MONDAY, "09:00", "B")
    assert again["booked"] is False and again["reason"] == "that time is not free"
    assert [f["time"] for f in again["free"]] == ["09:30", "10:00", "10:30"]
    with pytest.raises(BookingError, match="we offer haircut"):
        book.book("tattoo", MONDAY, "09:00", "A")
    with pytest.raises(BookingError, match="not a time of day"):
        book.book("haircut", MONDAY, "teatime", "A")
    with pytest.raises(BookingError, match="caller's name"):
        book.book("haircut", MONDAY, "09:00", " ")
    assert book.book("haircut", "2026-12-06", "09:00", "A")["booked"] is False  # Sunday
    assert book.book("haircut", MONDAY, "09:10", "A")["booked"] is False  # no such slot
    assert book.count() == 1


def test_concurrent_callers_cannot_take_the_same_slot(tmp_path: Path) -> None:
    """Twenty threads, each with its own book object on the same file, all ask for the one
    manicure slot at once: exactly one wins, the rest are told it is not free."""
    path = tmp_path / "shared.db"
    make_db(tmp_path, "shared.db").services()  # created before the race
    barrier = threading.Barrier(20)
    results: list[dict[str, object]] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        book = BookingDB(path, now=lambda: NOW)
        barrier.wait()
        result = book.book("manicure", MONDAY, "09:00", f"caller {i}")
        with lock:
            results.append(result)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["booked"] is True for r in results) == 1
    assert sum(r["booked"] is False for r in results) == 19
    assert make_db(tmp_path, "shared.db").count() == 1


async def test_concurrent_tool_calls_from_many_tasks(tmp_path: Path) -> None:
    """Thirty tasks through the ``book`` tool for the same haircut time (two stylists do
    haircuts at 9:00): exactly two win, with two different references."""
    from rejoinder.agents.booking import tools

    tools.use_database(make_db(tmp_path))
    results = await asyncio.gather(*(tools.book.invoke(
        {"service": "haircut", "day": MONDAY, "time": "09:00", "name": f"caller {i}"})
        for i in range(30)))
    won = [r for r in results if r["booked"] is True]
    assert sorted(r["staff"] for r in won) == ["Ana", "Ben"]
    assert sorted(r["reference"] for r in won) == ["BK-26DEC06-001", "BK-26DEC06-002"]
    assert tools.database().count() == 2


def test_the_database_refuses_a_second_booking_of_a_slot(tmp_path: Path) -> None:
    """The unique index holds even for a writer that skips the check."""
    book = make_db(tmp_path)
    book.book("haircut", MONDAY, "09:00", "A", staff="Ana")
    conn = sqlite3.connect(tmp_path / "booking.db")
    slot = conn.execute("SELECT slot_id, service_id FROM bookings").fetchone()
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute("INSERT INTO bookings (reference, made_on, seq, slot_id, service_id, name)"
                     " VALUES ('X', '2026-12-06', 99, ?, ?, 'B')", slot)
    conn.close()


async def test_tools_declare_side_effects_and_return_errors(tmp_path: Path) -> None:
    from rejoinder.agents.booking import tools

    tools.use_database(make_db(tmp_path))
    by_name = {t.name: t for t in tools.TOOLS}
    assert {n: t.side_effects for n, t in by_name.items()} == {
        "find_slots": False, "book": True, "reschedule": True, "cancel": True,
        "lookup_booking": False}
    assert by_name["book"].parameters["required"] == ["service", "day", "time"]
    slots = await by_name["find_slots"].invoke({"service": "beard trim", "day": MONDAY})
    assert slots[0] == {"day": MONDAY, "time": "09:00", "staff": "Ben",
                        "when": "Monday December 7 at 9:00 AM"}
    assert await by_name["cancel"].invoke({"reference": "BK-26DEC06-009"}) == \
        {"error": "no booking has the reference BK-26DEC06-009"}
    assert "not a day" in (await by_name["find_slots"].invoke(
        {"service": "haircut", "day": "someday"}))["error"]
    assert "caller's name" in (await by_name["book"].invoke(
        {"service": "haircut", "day": MONDAY, "time": "9"}))["error"]


def test_profile_in_config_sets_prompt_greeting_and_tools() -> None:
    from rejoinder.agents import booking
    from rejoinder.config import DEFAULT_SYSTEM_PROMPT, AgentOptions, load_config
    from rejoinder.core.errors import ConfigError

    agent = load_config(env={"REJOINDER_AGENT__PROFILE": "booking"}).agent
    assert (agent.system_prompt, agent.greeting, agent.tools) == \
        (booking.SYSTEM_PROMPT, booking.GREETING, "rejoinder.agents.booking.tools")
    assert "reference" in agent.system_prompt
    # What the configuration sets explicitly wins over the profile.
    own = AgentOptions(profile="booking", greeting="Hi.", tools="my.tools")
    assert (own.system_prompt, own.greeting, own.tools) == \
        (booking.SYSTEM_PROMPT, "Hi.", "my.tools")
    assert AgentOptions().system_prompt == DEFAULT_SYSTEM_PROMPT and AgentOptions().tools == ""
    with pytest.raises(ConfigError, match="agent.profile.*no built-in agent 'bank'"):
        AgentOptions(profile="bank")


def test_serve_agent_option_runs_the_profile(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    import rejoinder.observability.logs as logs
    import rejoinder.server.app as app
    from rejoinder import cli
    from rejoinder.config import Config

    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)
    monkeypatch.setenv("REJOINDER_STORE__PATH", str(tmp_path / "calls.db"))
    served: list[Config] = []

    async def run_server(config: Config, stack: object, stop: object = None) -> None:
        served.append(config)

    monkeypatch.setattr(app, "run_server", run_server)
    assert cli.main(["serve", "--stack", "fake", "--agent", "booking", "--port", "0"]) == 0
    assert served[0].agent.profile == "booking"
    assert served[0].agent.tools == "rejoinder.agents.booking.tools"
    assert cli.main(["serve", "--stack", "fake", "--agent", "bank"]) == 2
    assert "no built-in agent 'bank'" in capsys.readouterr().err


def test_bench_script_starts_the_booking_agent(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """``rejoinder bench --script booking`` starts its server with the script's [server]
    settings: the booking agent, its tools behind the simulated calendar."""
    import contextlib

    from rejoinder.bench import runner
    from rejoinder.bench.scripts import load_script
    from rejoinder.core.errors import ConfigError

    script = load_script("booking")
    assert dict(script.server) == {"REJOINDER_AGENT__PROFILE": "booking",
                                   "REJOINDER_AGENT__TOOLS": "rejoinder.agents.booking.bench"}
    started: list[dict[str, str]] = []

    @contextlib.contextmanager
    def server_process(kind: str, log: Path, env: dict[str, str], **kw: object):  # type: ignore[no-untyped-def]
        started.append(env)
        raise RuntimeError("not started in this test")
        yield  # pragma: no cover

    monkeypatch.setattr(runner, "server_process", server_process)
    with pytest.raises(RuntimeError, match="not started"):
        runner.run(runner.BenchOptions(script=script, stack="fake", out=tmp_path),
                   progress=lambda line: None)
    assert started[0]["REJOINDER_AGENT__PROFILE"] == "booking"
    assert started[0]["REJOINDER_AGENT__TOOLS"] == "rejoinder.agents.booking.bench"

    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nagent = "booking"\n[[turn]]\nsay = "silence:0.1"\n')
    with pytest.raises(ConfigError, match="section.field"):
        load_script(str(bad))


def test_bench_tools_wait_for_the_calendar_and_use_their_own_book() -> None:
    from rejoinder.agents.booking import bench, tools

    assert bench.LATENCY_S == 0.3
    assert [(t.name, t.side_effects) for t in bench.TOOLS] == \
        [(t.name, t.side_effects) for t in tools.TOOLS]
    assert tools.database().path != tools.default_path()


def test_tool_arguments_carry_their_descriptions() -> None:
    """What each argument is, in the schema the LLM reads (from ``Annotated[..., Field]``)."""
    from rejoinder.agents.booking import tools

    props = tools.book.parameters["properties"]
    assert props["time"]["description"] == "the time of day, 24-hour HH:MM"
    assert props["day"]["description"].startswith("the day as the caller says it")
    assert tools.cancel.parameters["properties"]["reference"]["description"] == \
        "the booking reference, like BK-26DEC06-003"
