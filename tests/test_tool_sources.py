"""Where tools come from: decorated functions, modules, HTTP webhooks, a real MCP server
(a subprocess over stdio, or over streamable HTTP); bad definitions fail at start naming
the tool; the OpenAI-compatible provider offers tools and assembles streamed tool_calls."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from rejoinder.cluster.bus import free_port
from rejoinder.config import AgentOptions, McpServerOptions, WebhookToolOptions, _build
from rejoinder.core.errors import ConfigError
from rejoinder.providers.base import ChatMessage
from rejoinder.providers.openai.llm import OpenAILLM, to_openai_messages
from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, fake_stack
from rejoinder.testing.loopback import converse
from rejoinder.tools import Tool, Toolbox, ToolCall, load_module, load_tools, tool
from rejoinder.tools.mcp import McpToolError
from rejoinder.turn.options import TurnOptions

MCP_SERVER = Path(__file__).with_name("mcp_calendar_server.py")


# -- Python tools -------------------------------------------------------------------------
async def test_a_decorated_function_has_its_schema_from_the_hints_and_validates_calls():
    @tool(side_effects=False, timeout_s=2.0)
    async def find_slots(service: str, day: str, count: int = 3) -> list[str]:
        """Free slots for a service on a day."""
        return [f"{service} {day}"] * count

    assert isinstance(find_slots, Tool)
    assert find_slots.side_effects is False and find_slots.timeout_s == 2.0
    assert find_slots.description == "Free slots for a service on a day."
    params = find_slots.parameters
    assert params["type"] == "object"
    assert params["required"] == ["service", "day"]
    assert params["properties"]["count"]["type"] == "integer"
    assert find_slots.schema()["function"]["name"] == "find_slots"
    assert await find_slots.invoke({"service": "cut", "day": "mon", "count": "2"}) == [
        "cut mon", "cut mon"]  # "2" as the model wrote it, validated into 2
    with pytest.raises(ValueError, match="do not match"):
        await find_slots.invoke({"service": "cut"})

    @tool
    async def book(slot: str) -> str:
        """Book it."""
        return slot

    assert book.side_effects is True  # changes something unless declared otherwise


@pytest.mark.parametrize(("define", "problem"), [
    ("def f(x: str) -> str:\n    '''Doc.'''\n    return x", "async function"),
    ("async def f(x) -> str:\n    '''Doc.'''\n    return x", "no type hint"),
    ("async def f(x: str) -> str:\n    return x", "docstring"),
    ("async def f(*xs: str) -> str:\n    '''Doc.'''\n    return ''", "only named"),
])
def test_bad_python_tools_fail_naming_the_tool(define, problem):
    space: dict[str, object] = {}
    exec(define, space)  # noqa: S102  the definitions under test
    with pytest.raises(ConfigError, match=problem) as info:
        tool(space["f"])  # type: ignore[arg-type]
    assert info.value.field == "tools.f"


def test_tools_load_from_a_module_or_its_tools_list():
    tools = load_module("tool_modules.good")
    assert sorted(t.name for t in tools) == ["cancel", "find_slots"]
    assert [t.name for t in load_module("tool_modules.listed")] == ["ping"]
    with pytest.raises(ConfigError, match="defines no tools"):
        load_module("tool_modules.empty")
    with pytest.raises(ConfigError, match="cannot import"):
        load_module("tool_modules.nowhere")
    with pytest.raises(ConfigError, match="async function") as info:
        load_module("tool_modules.bad_sync")
    assert info.value.field == "tools.lookup_booking"


async def test_two_tools_with_one_name_fail_at_start():
    with pytest.raises(ConfigError, match="two tools") as info:
        await load_tools(AgentOptions(tools="tool_modules.good", webhook_tools=[
            WebhookToolOptions(name="cancel", description="Cancel.", url="http://x/")]))
    assert info.value.field == "tools.cancel"


def test_tool_config_is_checked_and_built_from_tables():
    agent = _build(AgentOptions, {
        "tools": "tool_modules.good", "max_tool_rounds": 2,
        "mcp_servers": [{"name": "cal", "command": ["python", "server.py"]}],
        "webhook_tools": [{"name": "crm", "description": "Look up.", "url": "http://h/x",
                           "side_effects": False,
                           "parameters": {"type": "object", "properties": {}}}]}, "agent.")
    assert agent.mcp_servers[0].command == ["python", "server.py"]
    assert agent.webhook_tools[0].side_effects is False
    with pytest.raises(ConfigError, match="either command"):
        McpServerOptions(name="x")
    with pytest.raises(ConfigError, match="max_tool_rounds"):
        AgentOptions(max_tool_rounds=0)


# -- webhooks -------------------------------------------------------------------------------
@pytest.fixture
async def crm():
    seen: list[dict[str, object]] = []

    async def lookup(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        if body.get("phone") == "fail":
            return web.Response(status=500, text="crm down for +15551234567")
        if body.get("phone") == "slow":
            await asyncio.sleep(2)
        return web.json_response({"customer": "Ada", "visits": 3})

    app = web.Application()
    app.router.add_post("/lookup", lookup)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/lookup", seen
    await runner.cleanup()


async def test_webhook_tools_post_the_arguments_and_return_the_json(crm):
    url, seen = crm
    box = await load_tools(AgentOptions(webhook_tools=[WebhookToolOptions(
        name="crm_lookup", description="Find a customer by phone.", url=url,
        parameters={"type": "object", "properties": {"phone": {"type": "string"}}},
        side_effects=False, timeout_s=0.5, headers={"Authorization": "Bearer k"})]))
    try:
        hook = box.tools["crm_lookup"]
        assert hook.side_effects is False and hook.timeout_s == 0.5
        assert await hook.invoke({"phone": "+15551234567"}) == {"customer": "Ada", "visits": 3}
        assert seen[0] == {"body": {"phone": "+15551234567"}, "auth": "Bearer k"}
        with pytest.raises(Exception, match="HTTP 500") as info:
            await hook.invoke({"phone": "fail"})
        assert "1555" not in str(info.value)  # the answer's text is not carried
    finally:
        await box.close()


async def test_a_webhook_in_a_conversation_times_out_into_an_apology(crm):
    url, _ = crm
    box = await load_tools(AgentOptions(webhook_tools=[WebhookToolOptions(
        name="crm_lookup", description="Find a customer.", url=url, timeout_s=0.3)]))
    llm = FakeLLM(lambda m: "Found you." if m[-1].role == "tool" else [
        ToolCall("c1", "crm_lookup", '{"phone": "slow"}')])
    tts = FakeTTS()
    stack = fake_stack(stt=FakeSTT(["it's me"]), llm=llm, tts=tts)
    stack.tools = box
    try:
        _, _, events = await converse(stack, [("silence", 0.3), ("speech", 0.6)],
                                      options=TurnOptions(speculate=False), extra_s=1.0)
    finally:
        await box.close()
    assert tts.spoken == [box.apology]
    assert [e["status"] for e in events if e["type"] == "tool"] == ["started", "timeout"]


def test_bad_webhook_definitions_fail_naming_the_tool():
    with pytest.raises(ConfigError) as info:
        asyncio.run(load_tools(AgentOptions(webhook_tools=[WebhookToolOptions(
            name="crm", description="x", url="http://h/", parameters={"type": "array"})])))
    assert info.value.field == "agent.webhook_tools.crm"
    with pytest.raises(ConfigError, match="url") as info:
        asyncio.run(load_tools(AgentOptions(webhook_tools=[WebhookToolOptions(
            name="crm", description="x", url="ftp://h/")])))


# -- MCP ------------------------------------------------------------------------------------
def _mcp_agent(**extra: object) -> AgentOptions:
    return AgentOptions(mcp_servers=[McpServerOptions(
        name="calendar", command=[sys.executable, str(MCP_SERVER)], timeout_s=10.0,
        **extra)])  # type: ignore[arg-type]


@pytest.mark.slow  # a real subprocess and a conversation in real time (about 5 s)
async def test_an_mcp_server_over_stdio_serves_its_tools_in_a_conversation():
    box = await load_tools(_mcp_agent())
    try:
        assert sorted(box.tools) == ["book_slot", "broken", "free_slots"]
        assert box.tools["free_slots"].side_effects is False  # readOnlyHint
        assert box.tools["book_slot"].side_effects is True
        assert box.tools["free_slots"].parameters["required"] == ["day"]

        def reply(messages: list[ChatMessage]):
            last = messages[-1]
            if last.role == "tool":
                result = json.loads(last.content)
                if "reference" in result:
                    return f"Booked, reference {result['reference']}."
                return "I have nine or half past two."
            if "book" in last.content:
                return ["Booking it.", ToolCall("c2", "book_slot",
                                                '{"slot": "friday 09:00", "name": "Ada"}')]
            return [ToolCall("c1", "free_slots", '{"day": "friday"}')]

        tts = FakeTTS()
        stack = fake_stack(stt=FakeSTT(["what's free on friday", "book nine please"]),
                           llm=FakeLLM(reply), tts=tts)
        stack.tools = box
        conv, _, events = await converse(
            stack, [("silence", 0.3), ("speech", 0.6), ("silence", 2.5), ("speech", 0.6)],
            options=TurnOptions(speculate=False), extra_s=2.0)
    finally:
        await box.close()
    assert tts.spoken == ["I have nine or half past two.", "Booking it.",
                          "Booked, reference BK-001."]
    results = [json.loads(m.content) for m in conv.history if m.role == "tool"]
    assert results[0] == {"result": ["friday 09:00", "friday 14:30"]}
    assert results[1] == {"reference": "BK-001", "slot": "friday 09:00"}
    assert [(e["name"], e["status"]) for e in events
            if e["type"] == "tool" and e["status"] != "started"] == [
        ("free_slots", "ok"), ("book_slot", "ok")]


async def test_an_mcp_tool_error_is_a_failed_call_and_a_dead_server_fails_at_start():
    box = await load_tools(_mcp_agent(prefix="cal_", read_only=["broken"]))
    try:
        broken = box.tools["cal_broken"]
        assert broken.side_effects is False  # listed read_only in the config
        with pytest.raises(Exception, match="reported an error"):
            await broken.invoke({"day": "monday"})
    finally:
        await box.close()
    with pytest.raises(ConfigError) as info:
        await load_tools(AgentOptions(mcp_servers=[McpServerOptions(
            name="gone", command=[sys.executable, "-c", "import sys; sys.exit(3)"])]))
    assert info.value.field == "agent.mcp_servers.gone"


# -- MCP over streamable HTTP ----------------------------------------------------------------
async def _listening(port: int, process: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(20):
        while True:
            assert process.poll() is None, "the MCP server exited"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


class McpHttpServer:
    """The calendar served over streamable HTTP by a process of its own, on one port."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: ASYNC220 (waited on in kill)
                [sys.executable, str(MCP_SERVER), "--http", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=log)
        await _listening(self.port, self.process)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
async def mcp_http(tmp_path: Path) -> AsyncIterator[McpHttpServer]:
    server = McpHttpServer(tmp_path / "mcp.log")
    await server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_an_mcp_server_over_streamable_http_serves_its_tools_in_a_conversation(mcp_http):
    box = await load_tools(AgentOptions(mcp_servers=[McpServerOptions(
        name="calendar", url=mcp_http.url, timeout_s=10.0)]))
    try:
        assert sorted(box.tools) == ["book_slot", "broken", "free_slots"]
        assert box.tools["free_slots"].side_effects is False  # readOnlyHint
        assert box.tools["book_slot"].side_effects is True
        assert box.tools["free_slots"].parameters["required"] == ["day"]

        def reply(messages: list[ChatMessage]):
            last = messages[-1]
            if last.role == "tool":
                return f"I have {' or '.join(json.loads(last.content)['result'])}."
            return [ToolCall("c1", "free_slots", '{"day": "friday"}')]

        tts = FakeTTS()
        stack = fake_stack(stt=FakeSTT(["what's free on friday"]), llm=FakeLLM(reply),
                           tts=tts)
        stack.tools = box
        conv, _, events = await converse(stack, [("silence", 0.3), ("speech", 0.6)],
                                         options=TurnOptions(speculate=False), extra_s=1.5)
        assert tts.spoken == ["I have friday 09:00 or friday 14:30."]
        assert [(e["name"], e["status"]) for e in events if e["type"] == "tool"] == [
            ("free_slots", "started"), ("free_slots", "ok")]
        assert await box.tools["book_slot"].invoke({"slot": "friday 09:00", "name": "Ada"}) \
            == {"reference": "BK-001", "slot": "friday 09:00"}
        with pytest.raises(Exception, match="reported an error"):
            await box.tools["broken"].invoke({"day": "monday"})
    finally:
        await box.close()


async def test_an_mcp_http_server_that_restarts_or_dies_is_reconnected_to(mcp_http):
    box = await load_tools(AgentOptions(mcp_servers=[McpServerOptions(
        name="calendar", url=mcp_http.url, timeout_s=10.0)]))
    try:
        book, free = box.tools["book_slot"], box.tools["free_slots"]
        assert (await book.invoke({"slot": "mon 09:00", "name": "Ada"}))["reference"] == \
            "BK-001"
        # Restarted between two calls: the new process does not know the session (HTTP
        # 404, nothing ran), so the call goes again on a new session and is answered.
        mcp_http.kill()
        await mcp_http.start()
        assert (await book.invoke({"slot": "mon 14:30", "name": "Ada"}))["reference"] == \
            "BK-001"  # the new process's first booking
        # Gone: the call fails at once, not after the tool's 10 s limit (the SDK leaves
        # a call whose connection failed unanswered).
        mcp_http.kill()
        started = time.monotonic()
        with pytest.raises(McpToolError, match="connection lost"):
            async with asyncio.timeout(5):
                await free.invoke({"day": "tue"})
        assert time.monotonic() - started < 3.0
        with pytest.raises(McpToolError, match="ConnectError"):  # still gone
            await free.invoke({"day": "tue"})
        await mcp_http.start()  # back: the next call connects again
        assert await free.invoke({"day": "tue"}) == {"result": ["tue 09:00", "tue 14:30"]}
    finally:
        await box.close()
    with pytest.raises(McpToolError, match="closed"):  # no connecting again after close
        await free.invoke({"day": "tue"})


async def test_an_mcp_url_that_serves_nothing_fails_at_start_saying_why(mcp_http):
    for url, why in ((f"http://127.0.0.1:{free_port()}/mcp", "ConnectError"),
                     (mcp_http.url.replace("/mcp", "/nope"), "answered 404")):
        with pytest.raises(ConfigError, match=f"cannot connect: .*{why}") as info:
            await load_tools(AgentOptions(mcp_servers=[McpServerOptions(name="gone", url=url)]))
        assert info.value.field == "agent.mcp_servers.gone"


# -- the OpenAI-compatible provider ------------------------------------------------------------
@pytest.fixture
async def tool_server():
    seen: list[dict[str, object]] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        fragments = [
            {"content": "Let me look."},
            {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                             "function": {"name": "find_slots", "arguments": ""}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '{"day": '}}]},
            {"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                             "function": {"name": "lookup", "arguments": '{"ref'}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": '"fri"}'}}]},
            {"tool_calls": [{"index": 1, "function": {"arguments": '": "BK-1"}'}}]},
        ]
        for delta in fragments:
            chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        await resp.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", seen
    await runner.cleanup()


async def test_openai_provider_sends_tools_and_assembles_fragmented_tool_calls(tool_server):
    url, seen = tool_server

    @tool(side_effects=False)
    async def find_slots(day: str) -> list[str]:
        """Free slots."""
        return []

    llm = OpenAILLM(url, "m")
    history = [ChatMessage("user", "call me on 555 123 4567"),
               ChatMessage("assistant", "", tool_calls=(ToolCall("c0", "lookup", "{}"),)),
               ChatMessage("tool", '{"phone": "555 123 4567"}', tool_call_id="c0")]
    try:
        items = [i async for i in llm.stream(history, [find_slots])]
    finally:
        await llm.close()
    assert items == ["Let me look.", ToolCall("call_a", "find_slots", '{"day": "fri"}'),
                     ToolCall("call_b", "lookup", '{"ref": "BK-1"}')]
    body = seen[0]
    assert body["tools"] == [find_slots.schema()]
    assert body["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c0", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}
    # A tool's result goes back redacted, like the caller's words.
    assert body["messages"][2]["role"] == "tool"
    assert body["messages"][2]["tool_call_id"] == "c0"
    assert "4567" not in body["messages"][2]["content"]
    assert "4567" not in body["messages"][0]["content"]


def test_history_in_the_chat_completions_shape():
    wired = to_openai_messages([ChatMessage("tool", "{}", tool_call_id="x")])
    assert wired == [{"role": "tool", "content": "{}", "tool_call_id": "x"}]


def test_a_toolbox_closes_what_it_started_even_when_a_later_tool_is_bad():
    closed: list[str] = []

    async def main() -> None:
        box = Toolbox()

        async def close() -> None:
            closed.append("x")

        box._closers.append(close)
        await box.close()
        await box.close()  # idempotent

    asyncio.run(main())
    assert closed == ["x"]
