"""What ``rejoinder bench --script booking --stack cloud`` rests on: the simulated cloud LLM
makes the script's tool calls, streamed in the OpenAI format, and the script carries its
own cloud values."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from rejoinder.bench.scripts import load_script
from rejoinder.cloudsim import load_profile, running_cloudsim
from rejoinder.core.errors import ConfigError
from rejoinder.providers.base import ChatMessage
from rejoinder.providers.openai.llm import OpenAILLM
from rejoinder.tools import Tool, ToolCall

CALLS = json.dumps([
    {"name": "find_slots", "arguments": {"service": "haircut", "day": "next monday"}},
    None,
    {"name": "cancel", "arguments": {"reference": "{reference}"}},
])


async def _nothing(arguments: dict[str, object]) -> None:
    return None


def _tool(name: str) -> Tool:
    return Tool(name, f"the {name} tool", {"type": "object", "properties": {}}, _nothing)


TOOLS = [_tool("find_slots"), _tool("cancel")]


@pytest.fixture(scope="module")
def cloud() -> Iterator[str]:
    with running_cloudsim("fast", llm_tool_calls=CALLS) as url:
        yield url


async def _ask(url: str, messages: list[ChatMessage],
               tools: list[Tool]) -> list[str | ToolCall]:
    llm = OpenAILLM(url + "/v1", "cloudsim")
    try:
        return [item async for item in llm.stream(messages, tools)]
    finally:
        await llm.close()


async def test_the_simulated_llm_makes_the_scripted_call_of_each_caller_turn(cloud: str
                                                                            ) -> None:
    first = [ChatMessage("system", "Be brief."), ChatMessage("user", "anything on monday")]
    (call,) = await _ask(cloud, first, TOOLS)
    assert isinstance(call, ToolCall)
    assert (call.name, call.args()) == ("find_slots",
                                        {"service": "haircut", "day": "next monday"})
    # Not offered that tool, or no tools at all: the canned text.
    assert all(isinstance(i, str) for i in await _ask(cloud, first, [_tool("cancel")]))
    assert all(isinstance(i, str) for i in await _ask(cloud, first, []))
    # After the result: the reply. The second turn has no call.
    result = ChatMessage("tool", json.dumps([{"day": "2026-12-07", "time": "09:00"}]),
                         tool_call_id=call.id)
    after = [*first, ChatMessage("assistant", "", tool_calls=(call,)), result]
    assert all(isinstance(i, str) for i in await _ask(cloud, after, TOOLS))
    second = [*after, ChatMessage("assistant", "I have nine."), ChatMessage("user", "ok")]
    assert all(isinstance(i, str) for i in await _ask(cloud, second, TOOLS))
    # The third names what an earlier result returned.
    booked = ChatMessage("tool", json.dumps({"booked": True, "reference": "BK-26DEC06-001"}),
                         tool_call_id="call-2")
    third = [*second, ChatMessage("assistant", "", tool_calls=(ToolCall("call-2", "book"),)),
             booked, ChatMessage("assistant", "Booked."), ChatMessage("user", "cancel it")]
    (cancel,) = await _ask(cloud, third, TOOLS)
    assert isinstance(cancel, ToolCall)
    assert (cancel.name, cancel.args()) == ("cancel", {"reference": "BK-26DEC06-001"})


@pytest.mark.parametrize("calls", ['{"name": "x"}', "[1]", '[{"name": 3}]', "not json",
                                   '[{"name": "x", "arguments": []}]'])
def test_bad_tool_calls_name_the_field(calls: str) -> None:
    with pytest.raises(ConfigError, match="llm.tool_calls"):
        load_profile("fast").with_overrides({"llm.tool_calls": calls})


def test_the_booking_script_brings_its_calls() -> None:
    script = load_script("booking")
    (key, value), = script.cloud
    calls = load_profile("cloud-typical").with_overrides({key: value}).llm.calls()
    assert [c[0] if c else None for c in calls] == [
        "find_slots", "book", "lookup_booking", "reschedule", "find_slots", None]
    assert len(calls) == len(script.turns)
