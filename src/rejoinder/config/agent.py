"""The agent: its prompt, greeting, tools (built in, MCP servers, webhooks), profile."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rejoinder.core.bounds import check_numbers
from rejoinder.core.errors import ConfigError

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant on a phone call. Answer in one or two short "
    "spoken sentences. Never use lists, markdown, emoji or symbols."
)


@dataclass(frozen=True)
class McpServerOptions:
    """One ``[[agent.mcp_servers]]``: a command to start (stdio) or a streamable HTTP url."""

    name: str = ""
    command: list[str] = field(default_factory=list)  # program and its arguments
    env: dict[str, str] = field(default_factory=dict)  # the subprocess's environment
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 5.0  # per call of any of its tools
    prefix: str = ""  # put before each tool's name (two servers with the same tool names)
    read_only: list[str] = field(default_factory=list)  # tools that change nothing

    def __post_init__(self) -> None:
        where = f"agent.mcp_servers.{self.name or '?'}"
        check_numbers(self, where, {"timeout_s": (0.001, 600.0)})
        if not self.name:
            raise ConfigError("agent.mcp_servers", "every server needs a name")
        if bool(self.command) == bool(self.url):
            raise ConfigError(where, "give either command (stdio) or url (streamable HTTP)")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url", "must start with http:// or https://")


@dataclass(frozen=True)
class WebhookToolOptions:
    """One ``[[agent.webhook_tools]]``: the arguments are POSTed as JSON to ``url``."""

    name: str = ""
    description: str = ""
    url: str = ""
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}})  # JSON schema
    timeout_s: float = 5.0
    side_effects: bool = True  # false: read-only, may be prefetched
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_numbers(self, f"agent.webhook_tools.{self.name or '?'}",
                      {"timeout_s": (0.001, 600.0)})


@dataclass(frozen=True)
class AgentOptions:
    name: str = "Rejoinder"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    greeting: str = ""  # spoken when the call connects; empty for none
    # A built-in agent (rejoinder.agents, e.g. "booking"): its prompt, greeting and tools
    # where the fields above and tools are left at their defaults.
    profile: str = ""
    # Tools (rejoinder.tools): a Python module whose @tool functions (or TOOLS list) the
    # agent may call, MCP servers, HTTP webhooks.
    tools: str = ""
    mcp_servers: list[McpServerOptions] = field(default_factory=list)
    webhook_tools: list[WebhookToolOptions] = field(default_factory=list)
    max_tool_rounds: int = 3  # LLM -> tools -> LLM rounds in one reply, then it must answer
    # A tool wait longer than this gets tool_filler said, once (0: never).
    tool_filler_after_s: float = 1.0
    tool_filler: str = "Let me check that."
    tool_apology: str = "Sorry, I couldn't do that just now."  # a tool failed or timed out
    tool_prefetch: bool = True  # run read-only tools from the caller's words ahead of time

    def __post_init__(self) -> None:
        if self.profile:
            _apply_profile(self)
        check_numbers(self, "agent", {"max_tool_rounds": (1, 20),
                                      "tool_filler_after_s": (0.0, 60.0)})
        for name in ("tool_filler", "tool_apology"):
            if not getattr(self, name).strip():
                raise ConfigError(f"agent.{name}", "must not be empty")


def _apply_profile(agent: AgentOptions) -> None:
    """Fill in the built-in profile's prompt, greeting and tools where left at defaults."""
    from rejoinder.agents import PROFILES, profile

    if agent.profile not in PROFILES:
        raise ConfigError("agent.profile", f"no built-in agent {agent.profile!r} (there is: "
                          f"{', '.join(sorted(PROFILES))})")
    chosen = profile(agent.profile)
    for name, default in (("system_prompt", DEFAULT_SYSTEM_PROMPT), ("greeting", ""),
                          ("tools", "")):
        if getattr(agent, name) == default:
            object.__setattr__(agent, name, getattr(chosen, name))
