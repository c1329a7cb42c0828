"""The OpenAI-compatible LLM provider against a small streaming chat-completions server."""

from __future__ import annotations

import json

import pytest
from aiohttp import web

from rejoinder.config import load_config
from rejoinder.core.errors import ProviderError, ProviderTimeout
from rejoinder.providers.base import ChatMessage
from rejoinder.providers.factory import build_stack
from rejoinder.providers.openai.llm import OpenAILLM


@pytest.fixture
async def chat_server():
    seen: list[dict] = []
    behaviour = {"mode": "ok"}

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"body": body, "auth": request.headers.get("Authorization")})
        if behaviour["mode"] == "500":
            return web.Response(status=500, text="model exploded")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if behaviour["mode"] == "slow":
            import asyncio
            await asyncio.sleep(1)
        for piece in ["Hello", " there", "."]:
            chunk = {"choices": [{"delta": {"content": piece}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1", seen, behaviour
    await runner.cleanup()


async def test_streams_deltas_and_sends_history_with_interruptions(chat_server):
    url, seen, _ = chat_server
    llm = OpenAILLM(url, "my-model", "sk-test")
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"),
                ChatMessage("assistant", "Hello, I can", interrupted=True),
                ChatMessage("user", "Stop.")]
    deltas = [d async for d in llm.stream(messages)]
    await llm.close()
    assert deltas == ["Hello", " there", "."]
    body = seen[0]["body"]
    assert body["model"] == "my-model" and body["stream"] is True
    assert body["messages"][2] == {"role": "assistant",
                                   "content": "Hello, I can [interrupted by the caller]"}
    assert seen[0]["auth"] == "Bearer sk-test"


async def test_http_errors_and_silence_become_provider_errors(chat_server):
    url, _, behaviour = chat_server
    llm = OpenAILLM(url, "m", first_token_timeout_s=0.3)
    behaviour["mode"] = "500"
    with pytest.raises(ProviderError, match="HTTP 500.*model exploded"):
        [d async for d in llm.stream([ChatMessage("user", "x")])]
    behaviour["mode"] = "slow"
    with pytest.raises(ProviderTimeout):
        [d async for d in llm.stream([ChatMessage("user", "x")])]
    await llm.close()
    dead = OpenAILLM("http://127.0.0.1:9/v1", "m")
    with pytest.raises(ProviderError, match="connection"):
        [d async for d in dead.stream([ChatMessage("user", "x")])]
    await dead.close()


def test_config_selects_the_openai_provider(chat_server):
    url, _, _ = chat_server
    config = load_config(None, {"REJOINDER_LLM__PROVIDER": "openai",
                                "REJOINDER_LLM__BASE_URL": url, "REJOINDER_LLM__MODEL": "m"})
    stack = build_stack(config, "fake")
    assert isinstance(stack.llm, OpenAILLM) and stack.llm.url == url + "/chat/completions"
