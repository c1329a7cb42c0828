"""What ``rejoinder bench --script booking --stack cloud`` rests on: the simulated cloud LLM
makes the script's tool calls, streamed in the OpenAI format, and the script carries its
own cloud values."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from rejoinder.bench.scripts import load_script
from rejoinder.cloudsim import load_profile, running_cloudsim
from rejoinder.core.errors import ConfigError
from rejoinder.core.redact import read_ahead_text
from rejoinder.providers.base import ChatMessage
from rejoinder.providers.openai.llm import OpenAILLM
from rejoinder.tools import Tool, ToolCall

CALLS = json.dumps([
    {"name": "find_slots", "arguments": {"service": "haircut", "day": "next monday"}},
    {"name": "cancel", "arguments": {"reference": "{reference}"}},
    None,
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


async def test_the_simulated_llm_makes_the_scripted_calls_in_order(cloud: str) -> None:
    first = [ChatMessage("system", "Be brief."), ChatMessage("user", "anything on monday")]
    (call,) = await _ask(cloud, first, TOOLS)
    assert isinstance(call, ToolCall)
    assert (call.name, call.args()) == ("find_slots",
                                        {"service": "haircut", "day": "next monday"})
    # Not offered that tool, or no tools at all: the canned text.
    assert all(isinstance(i, str) for i in await _ask(cloud, first, [_tool("cancel")]))
    assert all(isinstance(i, str) for i in await _ask(cloud, first, []))
    # After the result: the reply.
    result = ChatMessage("tool", json.dumps({"booked": True, "reference": "BK-26DEC06-001"}),
                         tool_call_id=call.id)
    after = [*first, ChatMessage("assistant", "", tool_calls=(call,)), result]
    assert all(isinstance(i, str) for i in await _ask(cloud, after, TOOLS))
    # The next caller turn gets the next call, naming what the earlier result returned;
    # the same when the history was cut to its last exchanges.
    second = [*after, ChatMessage("assistant", "Booked."), ChatMessage("user", "cancel it")]
    for messages in (second, [second[0], *second[2:]]):
        (cancel,) = await _ask(cloud, messages, TOOLS)
        assert isinstance(cancel, ToolCall)
        assert (cancel.name, cancel.args()) == ("cancel", {"reference": "BK-26DEC06-001"})
    # After it, null: no more calls.
    third = [*second, ChatMessage("assistant", "", tool_calls=(cancel,)),
             ChatMessage("tool", '{"cancelled": true}', tool_call_id=cancel.id),
             ChatMessage("assistant", "Cancelled."), ChatMessage("user", "thanks")]
    assert all(isinstance(i, str) for i in await _ask(cloud, third, TOOLS))


@pytest.mark.parametrize("calls", ['{"name": "x"}', "[1]", '[{"name": 3}]', "not json",
                                   '[{"name": "x", "arguments": []}]'])
def test_bad_tool_calls_name_the_field(calls: str) -> None:
    with pytest.raises(ConfigError, match="llm.tool_calls"):
        load_profile("fast").with_overrides({"llm.tool_calls": calls})


def test_the_booking_script_brings_its_calls() -> None:
    script = load_script("booking")
    profile = load_profile("cloud-typical").with_overrides(dict(script.cloud))
    calls = profile.llm.calls()
    assert [c[0] if c else None for c in calls] == [
        "find_slots", "book", "lookup_booking", "reschedule", "find_slots", None]
    assert len(calls) == len(script.turns)
    # Words the read-ahead may send while the caller speaks (no figures in them).
    assert len(read_ahead_text(profile.stt.transcript).split()) >= 5


@pytest.mark.slow
def test_booking_bench_against_the_simulated_cloud(tmp_path: Path) -> None:
    """The whole bench: the server runs the booking agent, the simulated LLM calls its
    tools, each waits the calendar's 300 ms, and the results list the calls per turn."""
    from rejoinder.bench.runner import BenchOptions, run

    results = run(BenchOptions(script=load_script("booking"), stack="cloud", out=tmp_path),
                  progress=lambda line: None)
    (level,) = results["runs"]
    assert level["calls"]["completed"] == 1
    turns = level["turns"]
    assert len(turns) == 6 and all(t["replied"] for t in turns)
    done = [t for t in level["tools"] if t["status"] != "started"]
    assert [(t["turn"], t["name"], t["status"]) for t in done] == [
        (2, "find_slots", "ok"), (3, "book", "ok"), (4, "lookup_booking", "ok"),
        (5, "reschedule", "ok"), (6, "find_slots", "ok")]  # turn 1 is the greeting
    assert all(t["ms"] >= 300 for t in done if not t["prefetched"])
    assert not any(t["prefetched"] for t in done if t["name"] in ("book", "reschedule"))
    # The streaming STT's partial words started the lookups while the caller spoke
    # (0.6 to 1.1 s before the end of speech, docs/benchmarks.md): every one a hit.
    assert all(t["prefetched"] for t in done if t["name"] in ("find_slots", "lookup_booking"))
    # A tool turn waits for the request that names the call (250 ms to its first token)
    # before the one for the words; a write also waits for its 300 ms tool (a read-only
    # one was prefetched); the last turn has neither.
    *tool_turns, last = [t["v2v_ms"] for t in turns]
    assert min(tool_turns) > last + 250
    assert min(tool_turns[1], tool_turns[3]) > last + 250 + 300  # book, reschedule
