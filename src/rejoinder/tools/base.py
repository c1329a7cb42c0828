"""Tools: what the agent can do besides talking, and the one contract every source meets.

A :class:`Tool` is a name, a description, a JSON schema for its arguments, and one async
``invoke(arguments) -> result``. Where it comes from (a decorated Python function, an MCP
server, an HTTP webhook) is the business of the module that builds it; the reply's tool loop
sees only this contract.

``side_effects`` is the line speculation never crosses: a tool that changes something (a
booking, a cancellation) runs only after the caller's turn is confirmed and the LLM asks for
it; a read-only tool (``side_effects=False``) may run early, from the caller's words while
they still speak, and its result is used only if the confirmed reply asks for exactly the
same call.

The LLM stream yields text deltas (``str``) and :class:`ToolCall` items; the history holds
assistant messages with ``tool_calls`` and ``tool`` messages with the results, in the
OpenAI chat-completions shape every compatible server speaks.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rejoinder.core.errors import ConfigError

Invoke = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class ToolCall:
    """One call the LLM asked for. ``arguments`` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str = "{}"

    def args(self) -> dict[str, Any]:
        """The arguments as a dict (``ValueError`` when the model wrote no JSON object)."""
        value = json.loads(self.arguments or "{}")
        if not isinstance(value, dict):
            raise ValueError("tool arguments must be a JSON object")
        return value

    def key(self) -> tuple[str, str]:
        """Identity for prefetch: same tool, same arguments (key order ignored)."""
        try:
            canonical = json.dumps(self.args(), sort_keys=True, separators=(",", ":"))
        except ValueError:
            canonical = self.arguments
        return self.name, canonical


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: Mapping[str, Any]  # JSON schema of the arguments (an "object" schema)
    invoke: Invoke = field(repr=False, compare=False)
    side_effects: bool = True      # False: may run before the turn is confirmed
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"tools.{self.name or '?'}",
                              "a tool name is letters, digits, '_' or '-'")
        if len(self.name) > 64:
            raise ConfigError(f"tools.{self.name}", "a tool name is at most 64 characters")
        if self.parameters.get("type") != "object":
            raise ConfigError(f"tools.{self.name}", 'parameters must be a JSON schema of'
                              ' "type": "object"')
        if not 0 < self.timeout_s <= 600:
            raise ConfigError(f"tools.{self.name}", "timeout_s must be in (0, 600]")

    def schema(self) -> dict[str, Any]:
        """The OpenAI chat-completions ``tools`` entry."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": dict(self.parameters)}}
