"""The extra fields an agent asks of its calls (``[analytics] fields``), one string each:

    "order_number"                   a string (or null: the call did not say)
    "wants_newsletter:boolean"       true or false
    "party_size:integer"             a whole number
    "plan:basic|pro|enterprise"      one of these words

A list of strings rather than a TOML table, so that the environment can set it too
(``REJOINDER_ANALYTICS__FIELDS=order_number,party_size:integer``). No project imports:
the configuration validates with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Names the standard result already uses; a field may not shadow them.
RESERVED = frozenset({"summary", "intent", "sentiment", "lead_score", "escalate", "slots",
                      "fields", "name", "callback_number", "reason", "urgency"})
MAX_FIELDS = 16
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
_WORD = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
_TYPES = ("string", "boolean", "integer")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # "string" | "boolean" | "integer" | "enum"
    choices: tuple[str, ...] = ()


def parse_field(spec: str) -> FieldSpec:
    """One field from its string; ValueError with a short reason when it is not one."""
    name, _, kind = spec.strip().partition(":")
    name, kind = name.strip(), kind.strip() or "string"
    if not _NAME.fullmatch(name):
        raise ValueError(f"{spec!r}: a name is lower-case letters, digits and _ (at most 40)")
    if name in RESERVED:
        raise ValueError(f"{spec!r}: {name!r} is a standard field already")
    if kind in _TYPES:
        return FieldSpec(name, kind)
    choices = tuple(c.strip() for c in kind.split("|"))
    if len(choices) < 2 or not all(_WORD.fullmatch(c) for c in choices):
        raise ValueError(f"{spec!r}: the type is string, boolean, integer or words a|b|c")
    if len(set(choices)) != len(choices):
        raise ValueError(f"{spec!r}: a choice is repeated")
    return FieldSpec(name, "enum", choices)


def parse_fields(specs: list[str]) -> tuple[FieldSpec, ...]:
    if len(specs) > MAX_FIELDS:
        raise ValueError(f"at most {MAX_FIELDS} fields")
    fields = tuple(parse_field(s) for s in specs)
    names = [f.name for f in fields]
    for n in names:
        if names.count(n) > 1:
            raise ValueError(f"{n!r} is given twice")
    return fields
