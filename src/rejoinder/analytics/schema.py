"""What is extracted from a call: the JSON schema the model is held to, the pydantic models
that validate its answer, and the prompt.

The schema is written out by hand, not generated: llama.cpp turns it into a grammar, and a
flat schema in a fixed property order, with every string bounded (``maxLength``), keeps the
grammar small and stops a small model from rambling inside a string for ever.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model

from rejoinder.analytics.fields import FieldSpec
from rejoinder.providers.base import ChatMessage

INTENTS = ("booking", "cancellation", "complaint", "sales_inquiry", "support",
           "wrong_number", "other")
SENTIMENTS = ("positive", "neutral", "negative")
URGENCIES = ("low", "medium", "high")

SUMMARY_MAX = 200
TEXT_MAX = 80
#: The transcript sent, in characters: the embedded model's prompt budget is ~1,000 tokens.
TRANSCRIPT_MAX_CHARS = 2_400

Summary = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                           max_length=SUMMARY_MAX)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=TEXT_MAX)]


class Slots(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None
    callback_number: Text | None  # as the transcript has it: a redacted number stays so
    reason: Text | None
    urgency: Literal["low", "medium", "high"]


class CallAnalytics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    summary: Summary
    intent: Literal["booking", "cancellation", "complaint", "sales_inquiry", "support",
                    "wrong_number", "other"]
    sentiment: Literal["positive", "neutral", "negative"]
    escalate: bool
    lead_score: Annotated[int, Field(ge=0, le=100)]
    slots: Slots
    fields: dict[str, Any] = Field(default_factory=dict)


class InvalidResult(Exception):
    """The model's answer is not JSON, or not the schema's (one failed attempt)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code  # "invalid_json" | "invalid_schema"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _field_schema(f: FieldSpec) -> dict[str, Any]:
    if f.kind == "enum":
        return _nullable({"enum": list(f.choices)})
    if f.kind == "string":
        return _nullable({"type": "string", "maxLength": TEXT_MAX})
    return _nullable({"type": f.kind})


def json_schema(extra: Sequence[FieldSpec] = ()) -> dict[str, Any]:
    """The JSON schema of the answer, extra fields under ``fields``."""
    text = _nullable({"type": "string", "maxLength": TEXT_MAX})
    properties: dict[str, Any] = {
        "summary": {"type": "string", "minLength": 1, "maxLength": SUMMARY_MAX},
        "intent": {"enum": list(INTENTS)},
        "sentiment": {"enum": list(SENTIMENTS)},
        "escalate": {"type": "boolean"},
        "lead_score": {"type": "integer", "minimum": 0, "maximum": 100},
        "slots": {
            "type": "object",
            "properties": {"name": text, "callback_number": text, "reason": text,
                           "urgency": {"enum": list(URGENCIES)}},
            "required": ["name", "callback_number", "reason", "urgency"],
            "additionalProperties": False,
        },
    }
    if extra:
        properties["fields"] = {
            "type": "object",
            "properties": {f.name: _field_schema(f) for f in extra},
            "required": [f.name for f in extra],
            "additionalProperties": False,
        }
    return {"type": "object", "properties": properties, "required": list(properties),
            "additionalProperties": False}


def _fields_model(extra: Sequence[FieldSpec]) -> type[BaseModel]:
    definitions: dict[str, Any] = {}
    for f in extra:
        kind: Any
        if f.kind == "enum":
            kind = Literal[f.choices]
        elif f.kind == "string":
            kind = Text
        else:
            kind = {"boolean": bool, "integer": int}[f.kind]
        definitions[f.name] = (kind | None, ...)
    model: type[BaseModel] = create_model(
        "ExtraFields", __config__=ConfigDict(extra="forbid", strict=True), **definitions)
    return model


def validate(text: str, extra: Sequence[FieldSpec] = ()) -> CallAnalytics:
    """The model's answer, validated; :class:`InvalidResult` when it is not one."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise InvalidResult("invalid_json", "the answer is not JSON") from None
    if not isinstance(raw, dict):
        raise InvalidResult("invalid_json", "the answer is not a JSON object")
    try:
        result = CallAnalytics.model_validate(raw)
        if extra:
            fields = _fields_model(extra).model_validate(raw.get("fields"))
            result.fields = fields.model_dump()
        elif result.fields:
            raise InvalidResult("invalid_schema", "fields that were not asked for")
    except ValidationError as exc:
        # Only where and what kind of error: the values may quote the call.
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['type']}"
                          for e in exc.errors()[:5])
        raise InvalidResult("invalid_schema", where) from None
    return result


SYSTEM_PROMPT = """You fill in a form about a phone call between a caller and an agent, \
as JSON. An example.
The call:
Caller: Hello, do you have a double room free this Saturday? How much is it?
Agent: Yes, a double room on Saturday is ninety euros.
The form:
{"summary": "The caller asked about a double room for Saturday and its price.", \
"intent": "sales_inquiry", "sentiment": "neutral", "escalate": false, "lead_score": 60, \
"slots": {"name": null, "callback_number": null, "reason": "room price for Saturday", \
"urgency": "low"}}
The fields.
summary: one short sentence: what the caller wanted and what happened.
intent: booking (make an appointment or reservation), cancellation (cancel or move one), \
complaint (unhappy with a product or service), sales_inquiry (wants to buy: prices, plans, \
a quote, a viewing), support (help with something they have), wrong_number (meant to call \
someone else), other.
sentiment: the caller's mood: positive, neutral or negative.
escalate: true only if the caller asks for a person, a manager or a supervisor, threatens \
to leave or take legal action, or it is an emergency.
lead_score: 0 to 100, how likely the caller is to buy or book (0: no chance, 100: ready).
slots.name: the caller's name if they said it, else null.
slots.callback_number: the caller's number exactly as written, such as [phone number], \
else null.
slots.reason: the reason for the call in a few words.
slots.urgency: low, medium or high."""


def answer_tokens(extra: Sequence[FieldSpec] = ()) -> int:
    """Tokens enough for the longest answer the schema allows (a token is at least one
    character of ASCII text), so that decoding held to the schema is never cut short."""
    strings = sum(f.kind == "string" for f in extra)
    return SUMMARY_MAX + 3 * TEXT_MAX + strings * TEXT_MAX + 40 * len(extra) + 160


def _describe(f: FieldSpec) -> str:
    if f.kind == "enum":
        return f"fields.{f.name}: one of {', '.join(f.choices)}, or null."
    return f"fields.{f.name}: a {f.kind}, or null if the call does not say."


def transcript_text(turns: Sequence[tuple[str, str]]) -> str:
    """The call as lines "Caller: ..." / "Agent: ...", cut in the middle when too long
    (the start says why they called; the end how it ended)."""
    lines: list[str] = []
    for user, agent in turns:
        if user.strip():
            lines.append(f"Caller: {user.strip()}")
        if agent.strip():
            lines.append(f"Agent: {agent.strip()}")
    text = "\n".join(lines)
    if len(text) > TRANSCRIPT_MAX_CHARS:
        half = TRANSCRIPT_MAX_CHARS // 2
        text = f"{text[:half]}\n[...]\n{text[-half:]}"
    return text


def messages(transcript: str, extra: Sequence[FieldSpec] = ()) -> list[ChatMessage]:
    system = SYSTEM_PROMPT
    if extra:
        system += "\n" + "\n".join(_describe(f) for f in extra)
    return [ChatMessage("system", system),
            ChatMessage("user", f"The call:\n{transcript}\n\nThe form, as JSON:")]
