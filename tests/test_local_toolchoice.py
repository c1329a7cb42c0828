"""Tool calling on the embedded model without the model: the intent stage, the argument rules,
the prompt and grammar helpers, the evaluation set's scoring, and SmolLM's tool turn over a
fake llama.cpp server."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rejoinder.bench.toolset import (
    PARTS,
    agent_tools,
    args_match,
    booking_tools,
    canonical,
)
from rejoinder.providers.base import ChatMessage
from rejoinder.providers.local import slots
from rejoinder.providers.local.smollm import SmolLM, SmolLMOptions
from rejoinder.providers.local.smollm_tools import ToolTurns
from rejoinder.providers.local.toolchoice import (
    IntentStage,
    choice_schema,
    clean_arguments,
    parse_spans,
    parse_tool_reply,
    span_grammar,
    spans,
)
from rejoinder.tools.base import Tool, ToolCall


async def _nothing(arguments: dict[str, Any]) -> dict[str, Any]:
    return {}


@pytest.mark.parametrize(("text", "tool"), [
    ("I'd like to book a haircut tomorrow at 3.", "book"),
    ("Please cancel my booking BK-26DEC06-003.", "cancel"),
    ("Can you move my appointment to Friday?", "reschedule"),
    ("Do you have anything free on Wednesday?", "find_slots"),
    ("When is my appointment? My name is John Smith.", "lookup_booking"),
    ("How are you today?", None),
    ("Thank you, that's all.", None),
])
def test_intent_stage_chooses_the_tool_or_none(text: str, tool: str | None) -> None:
    assert IntentStage(agent_tools()).choose(text) == tool


def test_intent_stage_takes_a_tool_named_aloud_and_weighs_cancel_over_book() -> None:
    transfer = Tool("transfer_call", "Hand the call to a person.",
                    {"type": "object", "properties": {}}, _nothing)
    stage = IntentStage([*agent_tools(), transfer])
    assert stage.choose("Can you transfer me to a person?") == "transfer_call"
    # "booking" names the book as well; cancelling is what the caller asks for
    scores = stage.scores("I want to cancel my booking")
    assert max(scores, key=lambda n: scores[n]) == "cancel"
    assert stage.choose("I'll take the first one then") == "book"


@pytest.mark.parametrize(("said", "time"), [
    ("tomorrow at 3", "15:00"),
    ("at 10 a.m., please", "10:00"),
    ("at 4.30?", "16:30"),
    ("to 12:30 tomorrow", "12:30"),
    ("Monday at 9 in the morning", "09:00"),
    ("at 8", "08:00"),
    ("at 2 p.m.", "14:00"),
    ("around noon", "12:00"),
    ("at three", "15:00"),
    ("a table for 2 people", None),  # a bare number is not a time
    ("on Friday", None),
])
def test_clock_times_are_read_in_business_hours(said: str, time: str | None) -> None:
    assert slots.clock(said) == time


def test_days_are_kept_as_said_or_made_dates() -> None:
    wednesday = dt.date(2026, 12, 2)
    assert slots.day("can I come tomorrow") == "tomorrow"
    assert slots.day("next Tuesday at 3") == "next tuesday"
    assert slots.day("sometime soon") is None
    assert slots.day("tomorrow", wednesday) == "2026-12-03"
    assert slots.day("on Friday", wednesday) == "2026-12-04"
    assert slots.day("Wednesday", wednesday) == "2026-12-09"  # a weekday is never today
    assert slots.day("today", wednesday) == "2026-12-02"


def test_fill_reads_typed_fields_and_leaves_the_rest() -> None:
    props = {
        "service": {"type": "string"},  # no enum: the model's to write
        "day": {"type": "string"}, "time": {"type": "string"},
        "name": {"type": "string"}, "phone": {"type": "string"},
        "reference": {"type": "string"},
        "kind": {"type": "string", "enum": ["haircut", "beard trim", "colour"]},
        "count": {"type": "integer"},
    }
    found, rest = slots.fill(props, "Hi, this is Maria Lopez, move BK-26DEC06-004 to Friday"
                                    " at 2 p.m. for my beard trims; call 555 123 4567.")
    assert found == {"day": "friday", "time": "14:00", "name": "Maria Lopez",
                     "phone": "555 123 4567", "reference": "BK-26DEC06-004",
                     "kind": "beard trim"}
    assert rest == ["service", "count"]
    # what was not said is not invented
    found, _ = slots.fill(props, "Do you do colouring?")
    assert found == {"kind": "colour"}


def test_reference_digits_are_not_a_time() -> None:
    found, _ = slots.fill({"reference": {"type": "string"}, "time": {"type": "string"}},
                          "Please cancel BK 20261206 003.")
    assert found == {"reference": "BK 20261206 003"}


def test_spans_are_the_callers_content_words() -> None:
    said = "Hi, I'd like to book a beard trim for Tom Baker tomorrow at 3, please."
    assert spans(said, {"book", "tom", "baker"}) == ["beard trim"]
    assert spans("Um, yes please, at 3.", set()) == []
    assert spans("a beard trim massage", set()) == ["beard trim massage"]
    assert spans("Book a manicure for 1 p.m. The name is Lee", {"book", "lee"}) == ["manicure"]
    assert span_grammar(2, ["haircut", 'say "hi"']) == (
        'root ::= value "\\n" value\nvalue ::= "haircut" | "say \\"hi\\""\n')
    assert parse_spans("haircut\nfriday", ["service", "day"]) == {
        "service": "haircut", "day": "friday"}
    assert parse_spans("haircut", ["service", "day"]) == {"service": "haircut"}


def test_a_tool_reply_is_parsed_only_for_known_tools() -> None:
    tools = agent_tools()
    reply = '<tool_call>{"name": "cancel", "arguments": {"reference": "BK-1"}}</tool_call>'
    assert parse_tool_reply(reply, tools) == ("cancel", {"reference": "BK-1"})
    assert parse_tool_reply('{"name": "fly", "arguments": {}}', tools) is None
    assert parse_tool_reply("Sure, I can help with that.", tools) is None
    assert parse_tool_reply('{"name": "cancel", "arguments": ', tools) is None


def test_choice_schema_offers_each_tool_with_its_arguments_or_none() -> None:
    tools = booking_tools()
    options = choice_schema(tools)["oneOf"]
    assert [o["properties"]["tool"]["const"] for o in options] == [
        *(t.name for t in tools), "none"]
    for tool, option in zip(tools, options, strict=False):
        assert option["properties"]["arguments"] == dict(tool.parameters)
        assert option["required"] == ["tool", "arguments"]
    assert options[-1]["required"] == ["tool"]


def test_clean_arguments_drops_unknown_and_empty_fields() -> None:
    book = next(t for t in agent_tools() if t.name == "book")
    assert clean_arguments(book, {"service": "haircut", "day": " ", "time": "",
                                  "colour": "red"}) == {"service": "haircut"}


def test_evaluation_set_is_sound() -> None:
    cases = [c for part in PARTS.values() for c in part]
    assert len(cases) >= 60
    assert set(PARTS) == {"tune", "held_out", "fresh"}
    for tools in (agent_tools(), booking_tools()):
        props = {t.name: set(t.parameters["properties"]) for t in tools}
        for c in cases:
            if c.tool is not None:
                assert set(c.args) <= props[c.tool], c
    assert sum(c.tool is None for c in cases) >= 12


def test_arguments_are_compared_canonically() -> None:
    assert canonical("time", "3 pm") == canonical("time", "15:00") == "15:00"
    assert canonical("time", "9 a.m.") == "09:00"
    assert canonical("day", "On Friday") == "friday"
    assert canonical("reference", "bk 26dec06 003") == canonical("reference", "BK-26DEC06-003")
    assert args_match({"service": "colour", "time": "16:30"},
                      {"service": "Color", "time": "4.30", "name": ""})
    assert not args_match({"service": "colour"}, {"service": "colour", "day": "today"})
    assert not args_match({"service": "colour", "day": "today"}, {"service": "colour"})


# SmolLM's tool turn over a fake llama.cpp server (no model is loaded)

class _FakeServer:
    """``handle_chat_completions`` that answers each request with ``reply(request)``,
    streamed as one chunk, and keeps the requests."""

    def __init__(self, reply: Callable[[dict[str, Any]], str]) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []

    def handle_chat_completions(self, request: dict[str, Any],
                                on_chunk: Callable[[dict[str, Any]], bool]) -> None:
        self.requests.append(request)
        on_chunk({"choices": [{"delta": {"content": self.reply(request)}}]})


def _smollm(server: _FakeServer, mode: str = "intent") -> SmolLM:
    llm = object.__new__(SmolLM)  # everything __init__ sets, but a fake server for the model
    llm.options = SmolLMOptions(tool_mode=mode)  # type: ignore[arg-type]
    llm.last_timings = {}
    llm._prompt_evaluated = llm._prompt_cached = 0
    llm._stats_lock = __import__("threading").Lock()
    llm._server = server
    llm._executor = ThreadPoolExecutor(max_workers=1)
    llm._tools = ToolTurns(llm)
    llm._running = set()
    return llm


SYSTEM = ChatMessage("system", "You are a salon's receptionist.")


async def _items(llm: SmolLM, messages: list[ChatMessage],
                 tools: list[Tool]) -> list[str | ToolCall]:
    return [item async for item in llm.stream(messages, tools)]


async def test_tool_turn_reads_typed_fields_and_asks_the_model_only_for_the_rest() -> None:
    server = _FakeServer(lambda request: '{"service": "haircut"}')
    llm = _smollm(server)
    items = await _items(llm, [SYSTEM, ChatMessage(
        "user", "I'd like to book a haircut tomorrow at 3.")], agent_tools())
    assert len(items) == 1 and isinstance(items[0], ToolCall)
    call = items[0]
    assert call.name == "book"
    assert call.args() == {"service": "haircut", "day": "tomorrow", "time": "15:00"}
    # the one required field no rule reads is the one word left that neither asked for
    # the tool ("book") nor was read by a rule: no choice, so the model is not asked
    assert server.requests == []


async def test_tool_turn_lets_the_model_choose_among_the_callers_words() -> None:
    server = _FakeServer(lambda request: "beard trim")
    llm = _smollm(server)
    items = await _items(llm, [SYSTEM, ChatMessage(
        "user", "Book a beard trim or a massage tomorrow at 3.")], agent_tools())
    assert [(i.name, i.args()) for i in items if isinstance(i, ToolCall)] == [
        ("book", {"service": "beard trim", "day": "tomorrow", "time": "15:00"})]
    (request,) = server.requests
    assert request["grammar"] == 'root ::= value\nvalue ::= "beard trim" | "massage"\n'
    assert "json_schema" not in request
    assert request["temperature"] == 0.0
    # the instruction comes last, so the conversation's cached prefix still holds
    assert request["messages"][0]["content"] == SYSTEM.content
    assert request["messages"][-1]["role"] == "system"
    llm._executor.shutdown()


async def test_tool_turn_without_words_to_choose_falls_back_to_the_schema() -> None:
    server = _FakeServer(lambda request: '{"service": "massage"}')
    llm = _smollm(server)
    items = await _items(llm, [SYSTEM, ChatMessage("user", "Book me in tomorrow at 3.")],
                         agent_tools())
    assert [(i.name, i.args()) for i in items if isinstance(i, ToolCall)] == [
        ("book", {"service": "massage", "day": "tomorrow", "time": "15:00"})]
    (request,) = server.requests
    assert set(request["json_schema"]["properties"]) == {"service"}
    assert request["json_schema"]["required"] == ["service"]
    llm._executor.shutdown()


async def test_tool_turn_with_every_field_read_never_runs_the_model() -> None:
    server = _FakeServer(lambda request: "unused")
    llm = _smollm(server)
    items = await _items(llm, [SYSTEM, ChatMessage(
        "user", "Please cancel my booking BK-26DEC06-003.")], agent_tools())
    assert [(i.name, i.args()) for i in items if isinstance(i, ToolCall)] == [
        ("cancel", {"reference": "BK-26DEC06-003"})]
    assert server.requests == []
    llm._executor.shutdown()


async def test_no_tool_is_a_plain_reply_and_a_tool_result_is_spoken_about() -> None:
    server = _FakeServer(lambda request: "Hello! How can I help?")
    llm = _smollm(server)
    items = await _items(llm, [SYSTEM, ChatMessage("user", "Hi there.")], agent_tools())
    assert items == ["Hello! How can I help?"]
    assert "json_schema" not in server.requests[-1]
    call = ToolCall("call_1", "find_slots", '{"service": "haircut"}')
    history = [SYSTEM, ChatMessage("user", "Anything free for a haircut?"),
               ChatMessage("assistant", "", tool_calls=(call,)),
               ChatMessage("tool", '[{"time": "15:00"}]', tool_call_id="call_1")]
    items = await _items(llm, history, agent_tools())
    assert items == ["Hello! How can I help?"]  # after a result: words, not another call
    wired = server.requests[-1]["messages"]
    assert [m["role"] for m in wired] == ["system", "user", "system"]
    assert wired[-1]["content"] == 'Result of find_slots: [{"time": "15:00"}]'
    llm._executor.shutdown()


async def test_grammar_and_prompt_modes_parse_the_models_call() -> None:
    choice = {"tool": "cancel", "arguments": {"reference": "BK-26DEC06-003", "x": 1}}
    server = _FakeServer(lambda request: json.dumps(choice))
    llm = _smollm(server, "grammar")
    items = await _items(llm, [SYSTEM, ChatMessage("user", "Cancel it.")], agent_tools())
    assert [(i.name, i.args()) for i in items if isinstance(i, ToolCall)] == [
        ("cancel", {"reference": "BK-26DEC06-003"})]
    assert "oneOf" in server.requests[-1]["json_schema"]
    llm._executor.shutdown()

    server = _FakeServer(lambda request: "Sure, we open at nine.")
    llm = _smollm(server, "prompt")
    items = await _items(llm, [SYSTEM, ChatMessage("user", "When do you open?")],
                         agent_tools())
    assert items == ["Sure, we open at nine."]
    assert "<tool_call>" in server.requests[-1]["messages"][-1]["content"]
    llm._executor.shutdown()
