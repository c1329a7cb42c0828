"""Tools from Model Context Protocol servers (``[[agent.mcp_servers]]``), through the
official ``mcp`` SDK (the ``mcp`` extra): a server started as a subprocess speaking stdio
(``command``), or one reached over streamable HTTP (``url``).

Each server gets one session for the life of the agent, held by its own task (the SDK's
transports are context managers that must open and close in the same task). A tool is
read-only (``side_effects=False``, so it may be prefetched) when the server marks it
``readOnlyHint`` or the config lists it in ``read_only``; any other tool is assumed to
change something.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from rejoinder.core.errors import ConfigError, MissingExtraError
from rejoinder.tools.base import Tool

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp.types import CallToolResult

    from rejoinder.config import McpServerOptions

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0  # a server's start, handshake and tool list
CLOSE_TIMEOUT_S = 5.0


class McpToolError(Exception):
    """The server answered the call with an error."""


class McpServer:
    """One MCP server: ``start()`` connects and lists its tools, ``close()`` ends it."""

    def __init__(self, options: McpServerOptions) -> None:
        self.options = options
        self.where = f"agent.mcp_servers.{options.name}"
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> list[Tool]:
        try:
            import mcp  # noqa: F401
        except ImportError:
            raise MissingExtraError("mcp", "mcp") from None
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[list[Any]] = loop.create_future()
        self._task = asyncio.create_task(self._hold(ready), name=f"mcp-{self.options.name}")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                listed = await asyncio.shield(ready)
        except TimeoutError:
            await self.close()
            raise ConfigError(self.where, f"no tool list within {START_TIMEOUT_S:g} s") from None
        except ConfigError:
            await self.close()
            raise
        return [self._tool(t) for t in listed]

    async def _hold(self, ready: asyncio.Future[list[Any]]) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client
        from mcp.client.streamable_http import streamablehttp_client

        o = self.options
        try:
            async with AsyncExitStack() as stack:
                if o.command:
                    params = StdioServerParameters(command=o.command[0], args=list(o.command[1:]),
                                                   env=dict(o.env) or None)
                    read, write = await stack.enter_async_context(stdio_client(params))
                else:
                    read, write, _ = await stack.enter_async_context(
                        streamablehttp_client(o.url, headers=dict(o.headers) or None))
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                listed = await session.list_tools()
                self._session = session
                ready.set_result(list(listed.tools))
                await self._stop.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        except Exception as exc:
            if not ready.done():
                ready.set_exception(ConfigError(self.where, f"cannot connect: {exc!r}"))
            else:
                log.warning("MCP server %s: connection lost (%s)", o.name, type(exc).__name__)
        finally:
            self._session = None

    def _tool(self, spec: Any) -> Tool:
        name = f"{self.options.prefix}{spec.name}"
        annotations = getattr(spec, "annotations", None)
        read_only = (spec.name in self.options.read_only
                     or bool(annotations is not None and annotations.readOnlyHint))
        schema = dict(spec.inputSchema or {"type": "object"})
        schema.setdefault("properties", {})
        remote = spec.name

        async def invoke(arguments: dict[str, Any]) -> Any:
            session = self._session
            if session is None:
                raise McpToolError(f"MCP server {self.options.name} is not connected")
            result = await session.call_tool(remote, arguments)
            if result.isError:
                raise McpToolError("the tool reported an error")
            return _result(result)

        try:
            return Tool(name=name, description=(spec.description or "").strip() or name,
                        parameters=schema, invoke=invoke, side_effects=not read_only,
                        timeout_s=self.options.timeout_s)
        except ConfigError as exc:
            raise ConfigError(f"{self.where}.{name}", exc.problem) from None

    async def close(self) -> None:
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(task)
        except TimeoutError:
            log.error("MCP server %s did not close within %.0f s", self.options.name,
                      CLOSE_TIMEOUT_S)
            task.cancel()
        except Exception:  # its failure was reported when it happened
            pass


def _result(result: CallToolResult) -> Any:
    """The structured result if the server gave one, else its text (JSON decoded)."""
    if result.structuredContent is not None:
        return result.structuredContent
    from mcp.types import TextContent

    texts = [c.text for c in result.content if isinstance(c, TextContent)]
    text = "\n".join(texts)
    try:
        return json.loads(text)
    except ValueError:
        return text
