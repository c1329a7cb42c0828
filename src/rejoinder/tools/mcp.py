"""Tools from Model Context Protocol servers (``[[agent.mcp_servers]]``), through the
official ``mcp`` SDK (the ``mcp`` extra): a server started as a subprocess speaking stdio
(``command``), or one reached over streamable HTTP (``url``).

Each server gets one session at a time, held by its own task (the SDK's transports are
context managers that must open and close in the same task). A tool is read-only
(``side_effects=False``, so it may be prefetched) when the server marks it
``readOnlyHint`` or the config lists it in ``read_only``; any other tool is assumed to
change something.

A lost connection (the server process exits, an HTTP server restarts or goes away) fails
the calls in flight at once, with :class:`McpToolError`, instead of leaving them to the
tool's time limit (the SDK does not answer them); the next call connects again (a new
subprocess, or a new HTTP session), within that call's time limit. The call that met the
loss is not retried: it may have changed something before the connection went.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import TYPE_CHECKING, Any

from rejoinder.core.errors import ConfigError, MissingExtraError
from rejoinder.core.tasks import cancel_all
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


class _Link:
    """One connection: its session once open, and the task that holds it."""

    def __init__(self) -> None:
        self.session: ClientSession | None = None
        self.stop = asyncio.Event()  # set: the holding task closes the session
        self.lost = asyncio.Event()  # set when the session has ended, for any reason
        self.task: asyncio.Task[None] | None = None


class McpServer:
    """One MCP server: ``start()`` connects and lists its tools, ``close()`` ends it."""

    def __init__(self, options: McpServerOptions) -> None:
        self.options = options
        self.where = f"agent.mcp_servers.{options.name}"
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()
        self._closed = False

    async def start(self) -> list[Tool]:
        try:
            import mcp  # noqa: F401
        except ImportError:
            raise MissingExtraError("mcp", "mcp") from None
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                listed = await self._connect()
        except TimeoutError:
            await self.close()
            raise ConfigError(self.where, f"no tool list within {START_TIMEOUT_S:g} s") from None
        except ConfigError:
            await self.close()
            raise
        return [self._tool(t) for t in listed]

    async def _connect(self) -> list[Any]:
        """Open a session (a task of its own holds it) and return the server's tool list."""
        ready: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        link = self._link = _Link()
        link.task = asyncio.create_task(self._hold(link, ready), name=f"mcp-{self.options.name}")
        return await asyncio.shield(ready)

    async def _hold(self, link: _Link, ready: asyncio.Future[list[Any]]) -> None:
        from mcp import ClientSession

        o = self.options
        try:
            async with AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(_transport(o))
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                listed = await session.list_tools()
                link.session = session
                ready.set_result(list(listed.tools))
                await link.stop.wait()
        except asyncio.CancelledError:
            if not ready.done():
                ready.cancel()
            raise
        except Exception as exc:
            if not ready.done():
                why = "the server answered 404 (no MCP endpoint at this url?)" \
                    if _session_gone(_one(exc)) else _why(exc)
                ready.set_exception(ConfigError(self.where, f"cannot connect: {why}"))
            else:
                log.warning("MCP server %s: connection lost (%s)", o.name, _why(exc))
        finally:
            link.session = None
            link.lost.set()

    async def _connected(self) -> tuple[_Link, ClientSession]:
        """The live connection, connecting again if the last one was lost."""
        async with self._connecting:
            link = self._link
            if link is None or link.session is None:
                if self._closed:
                    raise McpToolError(f"MCP server {self.options.name} is closed")
                await self._end(link)
                log.info("MCP server %s: connecting again", self.options.name)
                try:
                    await self._connect()
                except ConfigError as exc:
                    raise McpToolError(f"MCP server {self.options.name}: {exc.problem}") \
                        from None
                link = self._link
            assert link is not None and link.session is not None
            return link, link.session

    async def _call(self, remote: str, arguments: dict[str, Any]) -> Any:
        from mcp import McpError

        for _ in range(2):
            link, session = await self._connected()
            call = asyncio.create_task(session.call_tool(remote, arguments))
            gone = asyncio.create_task(link.lost.wait())
            try:
                await asyncio.wait((call, gone), return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_all((gone, *(() if call.done() else (call,))))
            if not call.done() or call.cancelled():  # the SDK cancels it as the session ends
                raise McpToolError(f"MCP server {self.options.name}: connection lost during"
                                   " the call")
            try:
                result = call.result()
            except McpError as exc:
                if not _session_gone(exc):
                    raise
                # The server no longer knows the session (it restarted): it ran nothing,
                # so the call goes again, once, on a new session, as the protocol says.
                log.info("MCP server %s: session ended by the server", self.options.name)
                await self._end(link)
                continue
            if result.isError:
                raise McpToolError("the tool reported an error")
            return _result(result)
        raise McpToolError(f"MCP server {self.options.name}: the new session was refused too")

    async def _end(self, link: _Link | None) -> None:
        """Close ``link``'s session, if still open, and wait for its task."""
        if link is None or link.task is None:
            return
        link.stop.set()
        task, link.task = link.task, None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.wait((task,))  # its outcome was reported by the task itself
        if not task.done():
            log.error("MCP server %s did not close within %.0f s", self.options.name,
                      CLOSE_TIMEOUT_S)
            task.cancel()

    def _tool(self, spec: Any) -> Tool:
        name = f"{self.options.prefix}{spec.name}"
        annotations = getattr(spec, "annotations", None)
        read_only = (spec.name in self.options.read_only
                     or bool(annotations is not None and annotations.readOnlyHint))
        schema = dict(spec.inputSchema or {"type": "object"})
        schema.setdefault("properties", {})
        remote = spec.name

        async def invoke(arguments: dict[str, Any]) -> Any:
            return await self._call(remote, arguments)

        try:
            return Tool(name=name, description=(spec.description or "").strip() or name,
                        parameters=schema, invoke=invoke, side_effects=not read_only,
                        timeout_s=self.options.timeout_s)
        except ConfigError as exc:
            raise ConfigError(f"{self.where}.{name}", exc.problem) from None

    async def close(self) -> None:
        self._closed = True
        await self._end(self._link)


def _transport(o: McpServerOptions) -> AbstractAsyncContextManager[tuple[Any, Any]]:
    """The SDK's client transport for ``o``: its read and write streams."""
    if o.command:
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(command=o.command[0], args=list(o.command[1:]),
                                       env=dict(o.env) or None)
        return stdio_client(params)
    return _streamable_http(o.url, dict(o.headers))


@contextlib.asynccontextmanager
async def _streamable_http(url: str, headers: dict[str, str]) -> AsyncIterator[tuple[Any, Any]]:
    import mcp.client.streamable_http as transport

    if hasattr(transport, "streamable_http_client"):  # the older name is deprecated
        from mcp.shared._httpx_utils import create_mcp_http_client

        async with create_mcp_http_client(headers=headers or None) as http, \
                transport.streamable_http_client(url, http_client=http) as (read, write, _):
            yield read, write
    else:
        async with transport.streamablehttp_client(url, headers=headers or None) as \
                (read, write, _):
            yield read, write


def _session_gone(exc: BaseException) -> bool:
    """The SDK's answer to an HTTP 404 on a request of a session the server has dropped."""
    error = getattr(exc, "error", None)
    return getattr(error, "message", "") == "Session terminated"


def _one(exc: BaseException) -> BaseException:
    """The one error inside the SDK's nested task groups (itself if not a group of one)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _why(exc: BaseException) -> str:
    """What went wrong, from inside the SDK's task groups: ``ConnectError: ...``."""
    exc = _one(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
