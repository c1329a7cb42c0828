"""The agent's tools, gathered once at start from every source the config names, and
what the reply's tool loop needs to know about them (rounds, filler, apology)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from rejoinder.core.errors import ConfigError
from rejoinder.tools.base import Tool

if TYPE_CHECKING:
    from rejoinder.config import AgentOptions

DEFAULT_FILLER = "Let me check that."
DEFAULT_APOLOGY = "Sorry, I couldn't do that just now."


@dataclass
class Toolbox:
    """Tools by name, unique. ``filler_after_s``: a tool wait longer than this gets
    ``filler`` said once (0: never); a failed or timed-out tool gets ``apology``."""

    name: ClassVar[str] = "tools"
    tools: dict[str, Tool] = field(default_factory=dict)
    max_rounds: int = 3
    filler_after_s: float = 1.0
    filler: str = DEFAULT_FILLER
    apology: str = DEFAULT_APOLOGY
    prefetch: bool = True
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, tools: Iterable[Tool], **options: object) -> Toolbox:
        box = cls(**options)  # type: ignore[arg-type]
        box.add(tools)
        return box

    def add(self, tools: Iterable[Tool]) -> None:
        for t in tools:
            if t.name in self.tools:
                raise ConfigError(f"tools.{t.name}", "two tools have this name")
            self.tools[t.name] = t

    def __bool__(self) -> bool:
        return bool(self.tools)

    def offered(self) -> tuple[Tool, ...]:
        return tuple(self.tools.values())

    async def close(self) -> None:
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            await close()


async def load_tools(agent: AgentOptions) -> Toolbox:
    """Every tool of ``[agent]``: the Python module, the webhooks, the MCP servers (each
    started and asked for its tools). A bad definition raises :class:`ConfigError` naming
    the tool; whatever started before it is closed again."""
    from rejoinder.tools.python import load_module

    box = Toolbox(max_rounds=agent.max_tool_rounds, filler_after_s=agent.tool_filler_after_s,
                  filler=agent.tool_filler, apology=agent.tool_apology,
                  prefetch=agent.tool_prefetch)
    try:
        if agent.tools:
            box.add(load_module(agent.tools))
        if agent.webhook_tools:
            from rejoinder.tools.webhook import Webhooks

            hooks = Webhooks()
            box._closers.append(hooks.close)
            box.add(hooks.tool(o) for o in agent.webhook_tools)
        for options in agent.mcp_servers:
            from rejoinder.tools.mcp import McpServer

            server = McpServer(options)
            tools = await server.start()
            box._closers.append(server.close)
            box.add(tools)
    except BaseException:
        await box.close()
        raise
    return box
