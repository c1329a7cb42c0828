"""Tool calls for a model too small to choose tools itself (SmolLM2-135M): an intent stage
chooses the tool from the caller's words, rules read the typed fields (days, times,
references, enums), and the model only picks among the caller's words for a field left, or
writes it under a schema (``SmolLMOptions.tool_mode``; ``python -m rejoinder.bench.tooleval``).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from rejoinder.providers.base import ChatMessage, StreamItem
from rejoinder.providers.local import slots
from rejoinder.providers.local.toolchoice import (
    IntentStage,
    arguments_instruction,
    choice_instruction,
    choice_schema,
    clean_arguments,
    parse_spans,
    parse_tool_reply,
    span_grammar,
    spans,
    tools_instruction,
)
from rejoinder.tools.base import Tool, ToolCall

if TYPE_CHECKING:
    from rejoinder.providers.local.smollm import SmolLM


class ToolTurns:
    """The turns of one :class:`SmolLM` that offer tools, answered after the caller's words:
    a tool call, or words (a question for a missing field, or the model's reply)."""

    def __init__(self, llm: SmolLM) -> None:
        self.llm = llm
        self._intent: tuple[tuple[Tool, ...], IntentStage] | None = None

    async def run(self, messages: list[ChatMessage],
                  tools: tuple[Tool, ...]) -> AsyncGenerator[StreamItem, None]:
        mode = self.llm.options.tool_mode
        if mode in ("intent", "intent_model"):
            said = messages[-1].content
            known = slots.known_references(m.content for m in messages[:-1]
                                           if m.role in ("tool", "assistant"))
            name = self._intent_stage(tools).choose(said)
            tool = next((t for t in tools if t.name == name), None)
            earlier = _asked_for_more(messages)
            if tool is None and mode == "intent" and earlier is not None:
                # A follow-up that only gives what the agent asked for ("tomorrow at three
                # please"): the tool the caller's previous words chose, if these fill a field.
                before = self._intent_stage(tools).choose(earlier)
                tool = next((t for t in tools if t.name == before), None)
                if tool is not None and not slots.fill(
                        dict(tool.parameters.get("properties") or {}), said, known=known)[0]:
                    tool = None
                if tool is not None:
                    said = f"{earlier} {said}"
            if tool is None:
                async for delta in self.llm.requests(self.llm.request(messages)):
                    yield delta
                return
            props = dict(tool.parameters.get("properties") or {})
            found: dict[str, Any]
            if mode != "intent":
                found, rest = {}, list(props)
            elif said != messages[-1].content and earlier is not None:  # later words win
                found, rest = slots.fill(props, earlier, known=known)
                now, _ = slots.fill(props, messages[-1].content, known=known)
                found.update(now)
                rest = [k for k in props if k not in found and slots.kind_of(
                    k, props[k] if isinstance(props[k], dict) else {}) is None]
            else:
                found, rest = slots.fill(props, said, known=known)
            required = tool.parameters.get("required", ())
            missing = [k for k in required if k not in found and k not in rest]
            if missing:
                # A field the rules own (a day, a time, a reference) the caller has not
                # said: ask for it; the model would invent one, and the tool would fail.
                ask = ChatMessage("system", _ask_for(tool, missing))
                async for delta in self.llm.requests(self.llm.request([*messages, ask])):
                    yield delta
                return
            # Only required fields go to the model: given an optional one the caller did not
            # fill (a stylist, a phone number), this model invents a value.
            rest = [k for k in rest if k in required]
            if rest:
                # The model picks each field's value among the caller's own words (a
                # grammar of their spans, without the words that chose the tool or that the
                # rules read): it copies the description or invents one when it may write
                # freely (tooleval: 0 services of 23 right under the schema alone).
                used = self._intent_stage(tools).cue_words(said, tool.name)
                for value in found.values():
                    used.update(str(value).lower().split())
                candidates = spans(said, used) if mode == "intent" else []
                if len(candidates) == 1 and len(rest) == 1:  # nothing left to choose
                    found[rest[0]] = candidates[0]
                elif candidates:
                    raw = await self._complete(messages, arguments_instruction(tool, rest),
                                               None, span_grammar(len(rest), candidates))
                    found = {**parse_spans(raw, rest), **found}
                else:
                    schema = {**tool.parameters,
                              "properties": {k: props[k] for k in rest},
                              "required": [k for k in tool.parameters.get("required", ())
                                           if k in rest]}
                    raw = await self._complete(messages, arguments_instruction(tool, rest),
                                               schema)
                    found = {**clean_arguments(tool, _object(raw)), **found}
            yield _call(tool.name, clean_arguments(tool, found))
        elif mode == "grammar":
            raw = await self._complete(messages, choice_instruction(tools), choice_schema(tools))
            choice = _object(raw)
            tool = next((t for t in tools if t.name == choice.get("tool")), None)
            if tool is None:
                async for delta in self.llm.requests(self.llm.request(messages)):
                    yield delta
                return
            args = choice.get("arguments")
            yield _call(tool.name, clean_arguments(tool, args if isinstance(args, dict) else {}))
        else:
            raw = await self._complete(messages, tools_instruction(tools), None)
            parsed = parse_tool_reply(raw, tools)
            if parsed is None:
                if raw.strip():
                    yield raw.strip()
                return
            tool = next(t for t in tools if t.name == parsed[0])
            yield _call(tool.name, clean_arguments(tool, parsed[1]))

    def _intent_stage(self, tools: tuple[Tool, ...]) -> IntentStage:
        if self._intent is None or self._intent[0] != tools:
            self._intent = (tools, IntentStage(tools))
        return self._intent[1]

    async def _complete(self, messages: list[ChatMessage], instruction: str,
                        schema: dict[str, Any] | None, grammar: str | None = None) -> str:
        """The whole greedy reply to ``messages`` with ``instruction`` after them (a system
        message at the end, so the conversation's cached prefix still holds), held to
        ``schema`` (or a GBNF ``grammar``) when given."""
        request = self.llm.request([*messages, ChatMessage("system", instruction)])
        request.update(max_tokens=self.llm.options.tool_max_tokens, temperature=0.0)
        if schema is not None:
            request["json_schema"] = schema
        if grammar is not None:
            request["grammar"] = grammar
        parts: list[str] = []
        async for delta in self.llm.requests(request):
            parts.append(delta)
        return "".join(parts)


def _asked_for_more(messages: Sequence[ChatMessage]) -> str | None:
    """The caller's previous words, when the agent answered them with words alone (it
    asked for something) and the caller has now spoken again; else None."""
    for m in reversed(messages[:-1]):
        if m.role == "tool" or m.tool_calls:
            return None
        if m.role == "user":
            return m.content
    return None


def _ask_for(tool: Tool, fields: Sequence[str]) -> str:
    props = tool.parameters.get("properties") or {}
    wanted = ", ".join(str((props.get(f) or {}).get("description", f)) for f in fields)
    return f"To {tool.name.replace('_', ' ')}, ask the caller for {wanted}. One short question."


def _object(raw: str) -> dict[str, Any]:
    """The JSON object the model wrote; empty when it was cut short or is not one."""
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _call(name: str, arguments: dict[str, Any]) -> ToolCall:
    return ToolCall(f"call_{secrets.token_hex(6)}", name, json.dumps(arguments))
