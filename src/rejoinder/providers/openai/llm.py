"""Any OpenAI-compatible chat-completions server (vLLM, llama.cpp server, Ollama,
LM Studio, a cloud API), streamed over server-sent events with aiohttp."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from rejoinder.core.errors import ProviderError, ProviderStreamError, ProviderUnavailable
from rejoinder.providers.base import LLM, ChatMessage
from rejoinder.providers.remote._http import UNAVAILABLE_STATUSES, connection_error
from rejoinder.tools.base import Tool, ToolCall

log = logging.getLogger(__name__)


def to_openai_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Our history as chat-completions messages. An interrupted reply keeps what the
    caller heard and says it was cut off, so the model does not assume it was heard.
    Tool calls and results take the chat-completions shape."""
    out: list[dict[str, Any]] = []
    for m in messages:
        content = m.content
        if m.interrupted:
            content = f"{content} [interrupted by the caller]".strip()
        wired: dict[str, Any] = {"role": m.role, "content": content}
        if m.tool_calls:
            wired["content"] = content or None
            wired["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
        if m.tool_call_id is not None:
            wired["tool_call_id"] = m.tool_call_id
        out.append(wired)
    return out


class _ToolCalls:
    """Tool calls assembled from streamed fragments: the first fragment of a call has its
    ``index``, ``id`` and name; later ones add pieces of the arguments' JSON."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def push(self, fragments: list[dict[str, Any]]) -> None:
        for i, frag in enumerate(fragments):
            index = frag.get("index", i)
            call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            call["id"] = frag.get("id") or call["id"]
            function = frag.get("function") or {}
            call["name"] += function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""

    def done(self) -> list[ToolCall]:
        calls, self._calls = self._calls, {}
        return [ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}")
                for i, c in sorted(calls.items()) if c["name"]]


class OpenAILLM(LLM):
    name = "openai-llm"

    def __init__(self, base_url: str, model: str, api_key: str = "", *,
                 temperature: float = 0.3, max_tokens: int = 80,
                 first_token_timeout_s: float = 10.0) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.first_item_timeout_s = first_token_timeout_s
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0))
        return self._session

    def _stream(self, messages: list[ChatMessage],
                tools: Sequence[Tool] = ()) -> AsyncIterator[str | ToolCall]:
        body: dict[str, Any] = {
            "model": self.model, "messages": to_openai_messages(messages), "stream": True,
            "temperature": self.temperature, "max_tokens": self.max_tokens}
        if tools:
            body["tools"] = [t.schema() for t in tools]
        return self._items(body)

    def _stream_json(self, messages: list[ChatMessage], schema: dict[str, Any],
                     max_tokens: int) -> AsyncIterator[str]:
        """Structured outputs (``response_format`` json_schema; vLLM, llama.cpp server,
        Ollama and OpenAI take it)."""
        return self._post({
            "model": self.model, "messages": to_openai_messages(messages), "stream": True,
            "temperature": 0.0, "max_tokens": max_tokens,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "call_analytics", "strict": True, "schema": schema}}})

    async def _post(self, body: dict[str, Any]) -> AsyncIterator[str]:
        """POST a streamed chat-completions request; its text deltas."""
        async for item in self._items(body):
            if isinstance(item, str):
                yield item

    async def _items(self, body: dict[str, Any]) -> AsyncIterator[str | ToolCall]:
        """POST a streamed chat-completions request; its text deltas and tool calls (each
        whole: yielded when the choice finishes, its argument fragments joined)."""
        calls = _ToolCalls()
        try:
            async with self._client().post(self.url, json=body, headers=self._headers) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:300]
                    cls = (ProviderUnavailable if resp.status in UNAVAILABLE_STATUSES
                           else ProviderError)
                    raise cls(self.name, f"HTTP {resp.status} from {self.url}: {detail}")
                async for line in resp.content:
                    text = line.decode("utf-8", "replace").strip()
                    if not text.startswith("data:"):
                        continue
                    data = text[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        choices = json.loads(data).get("choices") or [{}]
                    except ValueError:
                        raise ProviderStreamError(self.name, "malformed stream event") from None
                    delta = choices[0].get("delta") or {}
                    if delta.get("content"):
                        yield delta["content"]
                    if delta.get("tool_calls"):
                        calls.push(delta["tool_calls"])
                    if choices[0].get("finish_reason"):  # the calls are whole now
                        for call in calls.done():
                            yield call
                for call in calls.done():  # a server that ended without a finish_reason
                    yield call
        except aiohttp.ClientError as exc:
            raise connection_error(self.name, self.url, exc) from exc

    async def warm(self, messages: list[ChatMessage]) -> None:
        """Remote servers keep their own caches; opening the connection is enough."""
        self._client()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
