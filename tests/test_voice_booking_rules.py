"""The rules behind a booking by voice on the embedded model: what Whisper tiny.en writes
for a caller who reads out a reference or says "three", a follow-up that only gives what
the agent asked for, the reference the conversation already holds, and the read-back."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rejoinder.agents.booking.tools import TOOLS
from rejoinder.providers.base import ChatMessage
from rejoinder.providers.local import slots
from rejoinder.providers.local.smollm import SmolLM, SmolLMOptions
from rejoinder.providers.local.smollm_tools import ToolTurns
from rejoinder.providers.local.toolchoice import IntentStage
from rejoinder.tools.base import ToolCall

REF = "BK-26DEC06-001"
REF_PROPS = {"reference": {"type": "string"}, "day": {"type": "string"},
             "time": {"type": "string"}}


@pytest.mark.parametrize("heard", [  # what tiny.en wrote for espeak reading BK-26DEC06-001
    "Please reschedule BK26 December 06, 0-0-1 to Friday at 10.",
    "My reference is BK26DC 060 001 Can you move it to Friday at 10?",
    "Please move BK26, DDC-0-6, 0-0-0-1 to Friday at 10AM.",
    "I need to cancel my appointment. The references be K-26, VDC-0-6, 0-0-1.",
])
def test_a_reference_read_aloud_is_the_known_one(heard: str) -> None:
    found, _ = slots.fill(REF_PROPS, heard, known=[REF])
    assert found["reference"] == REF


def test_a_reference_not_said_is_the_only_one_the_call_holds() -> None:
    assert slots.fill(REF_PROPS, "Please cancel my appointment.", known=[REF])[0] == {
        "reference": REF}
    # two bookings in the call: the caller must say which
    assert "reference" not in slots.fill(
        REF_PROPS, "Please cancel it.", known=[REF, "BK-26DEC06-002"])[0]
    # a well-formed other reference is that one, not the close known one
    assert slots.fill(REF_PROPS, "Cancel BK-26DEC06-002.", known=[REF])[0] == {
        "reference": "BK-26DEC06-002"}


def test_known_references_come_from_tool_results_newest_last() -> None:
    assert slots.known_references(
        ['{"booked": true, "reference": "BK-26DEC06-001", "day": "2026-12-07"}',
         "Your reference is BK-26DEC06-002.", "BK-26DEC06-001"]) == [
        "BK-26DEC06-002", "BK-26DEC06-001"]


def test_three_heard_as_free_after_at_is_three() -> None:
    assert slots.clock("Tomorrow at free please.") == "15:00"
    assert slots.clock("Are you free at 4?") == "16:00"
    assert slots.clock("Is Friday free?") is None


def test_moving_my_book_in_outweighs_booking() -> None:
    # "move my booking" as tiny.en writes it: "book" no longer counts twice for book
    assert IntentStage(TOOLS).choose("Can you move my book in BK26?") == "reschedule"


class _Server:
    def __init__(self, reply: Callable[[dict[str, Any]], str]) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []

    def handle_chat_completions(self, request: dict[str, Any],
                                on_chunk: Callable[[dict[str, Any]], bool]) -> None:
        self.requests.append(request)
        on_chunk({"choices": [{"delta": {"content": self.reply(request)}}]})


def _smollm(server: _Server) -> SmolLM:
    llm = object.__new__(SmolLM)  # everything __init__ sets, but a fake server for the model
    llm.options = SmolLMOptions()
    llm.last_timings = {}
    llm._prompt_evaluated = llm._prompt_cached = 0
    llm._stats_lock = __import__("threading").Lock()
    llm._server = server
    llm._executor = ThreadPoolExecutor(max_workers=1)
    llm._tools = ToolTurns(llm)
    llm._running = set()
    return llm


SYSTEM = ChatMessage("system", "You answer the phone for a salon.")


async def _items(llm: SmolLM, messages: list[ChatMessage]) -> list[str | ToolCall]:
    return [item async for item in llm.stream(messages, TOOLS)]


async def test_a_follow_up_with_only_the_time_completes_the_booking() -> None:
    server = _Server(lambda request: "haircut" if "grammar" in request
                     else "What day and time would you like?")
    llm = _smollm(server)
    first = [SYSTEM, ChatMessage("user", "I'd like to book a haircut. My name is John Smith.")]
    assert await _items(llm, first) == ["What day and time would you like?"]  # asked, no call
    assert "ask the caller for" in server.requests[-1]["messages"][-1]["content"]
    items = await _items(llm, [*first, ChatMessage("assistant", "What day and time?"),
                               ChatMessage("user", "Tomorrow at free please.")])
    calls = [(i.name, i.args()) for i in items if isinstance(i, ToolCall)]
    assert calls == [("book", {"service": "haircut", "day": "tomorrow", "time": "15:00",
                               "name": "John Smith"})]
    assert '"haircut"' in server.requests[-1]["grammar"]  # the service from the first turn
    llm._executor.shutdown()


async def test_cancel_my_appointment_takes_the_reference_the_call_booked() -> None:
    llm = _smollm(_Server(lambda request: "unused"))
    book = ToolCall("call_1", "book", "{}")
    history = [SYSTEM, ChatMessage("user", "Book a haircut tomorrow at 3 p.m."),
               ChatMessage("assistant", "", tool_calls=(book,)),
               ChatMessage("tool", json.dumps({"booked": True, "reference": REF}),
                           tool_call_id="call_1"),
               ChatMessage("assistant", "You are booked."),
               ChatMessage("user", "Please cancel my appointment.")]
    items = await _items(llm, history)
    assert [(i.name, i.args()) for i in items if isinstance(i, ToolCall)] == [
        ("cancel", {"reference": REF})]
    llm._executor.shutdown()


async def test_a_reply_to_a_result_with_a_reference_reads_it_back() -> None:
    server = _Server(lambda request: "You are booked for Monday.")
    llm = _smollm(server)
    book = ToolCall("call_1", "book", "{}")
    history = [SYSTEM, ChatMessage("user", "Book a haircut tomorrow at 3 p.m."),
               ChatMessage("assistant", "", tool_calls=(book,)),
               ChatMessage("tool", json.dumps({"booked": True, "reference": REF}),
                           tool_call_id="call_1")]
    said = "".join(str(i) for i in await _items(llm, history))
    assert said == f"Your reference is {REF}. You are booked for Monday."
    server.reply = lambda request: f"Booked, reference {REF}."
    assert "".join(str(i) for i in await _items(llm, history)) == (
        f"Your reference is {REF}. Booked, reference {REF}.")
    # The line the model copies from the history is not said twice.
    server.reply = lambda request: f"Your reference is {REF}. See you then."
    assert "".join(str(i) for i in await _items(llm, history)) == (
        f"Your reference is {REF}. See you then.")
    server.reply = lambda request: f"Your reference is {REF}."
    assert "".join(str(i) for i in await _items(llm, history)) == f"Your reference is {REF}. "
    llm._executor.shutdown()
