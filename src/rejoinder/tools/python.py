"""Python tools: a decorated async function, and loading them from a module.

    from rejoinder.tools import tool

    @tool(side_effects=False, timeout_s=2.0)
    async def find_slots(service: str, day: str) -> list[dict[str, str]]:
        \"\"\"Free appointment slots for a service on a day (YYYY-MM-DD).\"\"\"

The JSON schema of the arguments comes from the type hints (pydantic), the description
from the docstring; the LLM's arguments are validated against the hints before the
function runs (a model that writes ``"2"`` for an ``int`` gets 2; one that writes
nonsense gets an error result, not a crash). ``side_effects`` is true unless declared
otherwise: a tool is assumed to change something until its author says it does not.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any, overload

import pydantic

from rejoinder.core.errors import ConfigError
from rejoinder.tools.base import Tool

AsyncFn = Callable[..., Awaitable[Any]]


@overload
def tool(fn: AsyncFn, /) -> Tool: ...


@overload
def tool(*, side_effects: bool = True, timeout_s: float = 5.0, name: str | None = None,
         description: str | None = None) -> Callable[[AsyncFn], Tool]: ...


def tool(fn: AsyncFn | None = None, /, *, side_effects: bool = True, timeout_s: float = 5.0,
         name: str | None = None,
         description: str | None = None) -> Tool | Callable[[AsyncFn], Tool]:
    """Make an async function a :class:`Tool` (``@tool`` or ``@tool(...)``)."""

    def make(f: AsyncFn) -> Tool:
        return function_tool(f, side_effects=side_effects, timeout_s=timeout_s, name=name,
                             description=description)

    return make(fn) if fn is not None else make


def function_tool(fn: AsyncFn, *, side_effects: bool = True, timeout_s: float = 5.0,
                  name: str | None = None, description: str | None = None) -> Tool:
    """The :class:`Tool` of ``fn``; :class:`ConfigError` naming it when it cannot be one."""
    tool_name = str(name or getattr(fn, "__name__", ""))
    where = f"tools.{tool_name or '?'}"
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(where, "a tool must be an async function (async def)")
    text = description if description is not None else (inspect.getdoc(fn) or "")
    if not text or not text.strip():
        raise ConfigError(where, "a tool needs a description: give the function a docstring")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)  # keep Field(description=)
    except Exception as exc:
        raise ConfigError(where, f"its type hints cannot be resolved: {exc}") from None
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ConfigError(where, f"parameter {param.name!r}: only named parameters"
                              " (no *args, **kwargs or positional-only ones)")
        if param.name not in hints:
            raise ConfigError(where, f"parameter {param.name!r} has no type hint")
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (hints[param.name], default)
    try:
        model = pydantic.create_model(f"{tool_name}_arguments", **fields)
        schema = model.model_json_schema()
    except Exception as exc:
        raise ConfigError(where, f"no JSON schema from its type hints: {exc}") from None
    schema.pop("title", None)
    schema.setdefault("properties", {})

    async def invoke(arguments: dict[str, Any]) -> Any:
        try:
            parsed = model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            raise ValueError(f"arguments do not match the schema: {exc.error_count()} "
                             "errors") from None
        return await fn(**{k: getattr(parsed, k) for k in fields})

    return Tool(name=tool_name, description=text.strip(), parameters=schema, invoke=invoke,
                side_effects=side_effects, timeout_s=timeout_s)


def load_module(module: str) -> list[Tool]:
    """The tools of ``module``: its ``TOOLS`` list if it has one, else every :class:`Tool`
    at its top level. :class:`ConfigError` (``agent.tools``) if it cannot be imported or
    holds none."""
    try:
        mod = importlib.import_module(module)
    except ConfigError:
        raise  # a bad tool definition in it: already names the tool
    except Exception as exc:
        raise ConfigError("agent.tools", f"cannot import {module!r}: {exc!r}") from None
    listed = getattr(mod, "TOOLS", None)
    if listed is not None:
        if not isinstance(listed, list | tuple):
            raise ConfigError("agent.tools", f"{module}.TOOLS must be a list of tools")
        for i, item in enumerate(listed):
            if not isinstance(item, Tool):
                raise ConfigError(f"agent.tools[{i}]", f"{module}.TOOLS[{i}] is a "
                                  f"{type(item).__name__}, not a tool (decorate it with @tool)")
        return list(listed)
    found = [v for v in vars(mod).values() if isinstance(v, Tool)]
    if not found:
        raise ConfigError("agent.tools", f"{module!r} defines no tools (decorate async "
                          "functions with @tool, or list them in TOOLS)")
    return found
