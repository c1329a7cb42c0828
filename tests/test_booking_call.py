"""A booking call on the fake stack, on virtual time: the caller asks what is free, books,
and says goodbye; a fake LLM scripted as a good agent calls the booking tools against a
real SQLite book. The reference the book gave comes back to the LLM through redaction
and is spoken; the book holds exactly one booking."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rejoinder.agents.booking import tools
from rejoinder.agents.booking.db import BookingDB
from rejoinder.providers.base import ChatMessage
from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack, run_virtual
from rejoinder.testing.fakes import Scripted
from rejoinder.testing.loopback import converse
from rejoinder.tools import Toolbox, ToolCall
from rejoinder.turn.engine import TurnOptions

NOW = dt.datetime(2026, 12, 6, 20, 15)  # a Sunday evening
SAID = ["do you have anything free for a haircut on monday",
        "half past nine please my name is sam taylor",
        "no that's all thank you goodbye"]
FIND = ToolCall("call-1", "find_slots", '{"service": "haircut", "day": "monday"}')
BOOK = ToolCall("call-2", "book", json.dumps(
    {"service": "haircut", "day": "monday", "time": "09:30", "name": "Sam Taylor"}))


def agent(messages: list[ChatMessage]) -> Scripted:
    """A good booking agent: a tool for each request, the result read back."""
    last = messages[-1]
    if last.role == "tool":
        result = json.loads(last.content)
        if isinstance(result, list):
            return f"I have {result[0]['when']} or {result[1]['when']}. Which suits you?"
        return f"You are booked for {result['when']}. Your reference is {result['reference']}."
    callers = sum(m.role == "user" for m in messages)
    return {1: [FIND], 2: [BOOK]}.get(callers, "Thank you for calling, goodbye.")


async def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)  # the book in the loop's thread: virtual time cannot wait on threads


def test_a_caller_books_and_hears_the_reference(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tools, "_offload", _inline)
    book = tools.use_database(BookingDB(tmp_path / "booking.db", now=lambda: NOW))
    llm = FakeLLM(agent, Latency(first_s=0.2, per_item_s=0.02))
    tts = FakeTTS(Latency(first_s=0.05))
    stack = fake_stack(stt=FakeSTT(SAID, Latency(first_s=0.1)), llm=llm, tts=tts)
    stack = dataclasses.replace(stack, tools=Toolbox.of(tools.TOOLS))

    async def main() -> tuple[Any, Any, list[dict[str, object]]]:
        script = [("silence", 0.5), ("speech", 1.5), ("silence", 6.0), ("speech", 1.5),
                  ("silence", 6.0), ("speech", 1.2)]
        return await converse(stack, script, options=TurnOptions(), extra_s=6.0)

    conv, _, events = run_virtual(main())
    spoken = " ".join(tts.spoken)
    assert "I have Monday December 7 at 9:00 AM or Monday December 7 at 9:30 AM." in spoken
    assert "You are booked for Monday December 7 at 9:30 AM." in spoken
    assert "Your reference is BK-26DEC06-001." in spoken
    assert [e["text"] for e in events if e["type"] == "user"] == SAID
    # The book holds exactly the one booking, made once.
    assert book.count() == 1
    (made,) = book.lookup(name="Sam Taylor")
    assert (made["reference"], made["day"], made["time"]) == \
        ("BK-26DEC06-001", "2026-12-07", "09:30")
    # The events name the tools and how they went, never their arguments or results.
    calls = [(e["turn"], e["name"], e["status"]) for e in events if e["type"] == "tool"]
    assert [c for c in calls if c[2] != "started"] == [(1, "find_slots", "ok"), (2, "book", "ok")]
    assert not any("Sam" in json.dumps(e) for e in events if e["type"] == "tool")
    assert [e["prefetched"] for e in events if e.get("name") == "book"] == [False, False]
