"""Tool calling for a model too small to choose tools: an intent stage, then constrained arguments.

SmolLM2-135M, given tool descriptions, mostly ignores them or copies the format wrongly, and
held to a grammar that lets it choose among the tools it picks close to at random
(``python -m rejoinder.bench.tooleval``; docs/benchmarks.md, "Tool calling on the embedded
model"). What it does well enough is copy words from the caller into fields. So the work is
split:

1. :class:`IntentStage` chooses the tool (or none) from the caller's words: cue phrases per
   kind of action (book, cancel, reschedule, availability, look-up), matched to the tools by
   the words of their names, plus the tool's own name words. Microseconds, no model.
2. The model writes that one tool's arguments, decoded under its JSON schema
   (:func:`arguments_instruction`; llama.cpp turns the schema into a grammar), so they parse.

The other two ways, measured against this one, are here too: :func:`tools_instruction` and
:func:`parse_tool_reply` (the tools in the prompt, a ``<tool_call>`` reply parsed) and
:func:`choice_schema` (the whole choice under a grammar).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rejoinder.providers.local.slots import misheard
from rejoinder.tools.base import Tool


@dataclass(frozen=True)
class Cue:
    """A kind of action: the tools it fits (by the words of their names) and how callers ask."""

    names: frozenset[str]  # a tool whose name has one of these words takes this cue
    phrases: tuple[str, ...]  # lower-case; matched on word boundaries
    weight: float


def _cue(names: str, weight: float, *phrases: str) -> Cue:
    return Cue(frozenset(names.split()), phrases, weight)


# Cancel and reschedule outweigh booking: "cancel my booking" and "move my appointment" name
# the booking too. Look-up and availability are questions; booking is the plain request.
DEFAULT_CUES: tuple[Cue, ...] = (
    _cue("cancel delete remove", 4.0,
         "cancel", "cancelled", "canceled", "call off", "won't make it", "can't make it",
         "cannot make it", "can't come", "won't be coming", "not coming", "drop my",
         "get rid of my", "scrap my"),
    _cue("reschedule move change", 4.0,
         "reschedule", "move my", "move it", "move the", "change my", "change the", "change it",
         "push my", "push it", "push back", "postpone", "different time", "different day",
         "another day", "another time", "rather come", "instead"),
    _cue("lookup look get check find_booking", 3.0,
         "look up", "check my", "check on my", "confirm my", "when is my", "what time is my",
         "when's my", "what day is my", "do i have", "have i got", "details of my",
         "is my booking", "is my appointment", "i booked", "remind me", "still on"),
    _cue("slots availability available search", 2.5,
         "available", "availability", "free", "openings", "slot", "slots",
         "any time", "anything", "what times", "which times", "when can", "when could",
         "do you have", "have you got", "is there", "are there", "spaces", "space"),
    _cue("book reserve create schedule", 2.0,
         "book", "book me", "reserve", "schedule", "make an appointment", "make a booking",
         "an appointment", "appointment for", "i'd like a", "i would like a", "i want a",
         "i need a", "can i get a", "could i get a", "can i have a", "put me down",
         "sign me up", "i'll take", "i will take", "come in for", "get me in"),
)

_WORD = re.compile(r"[a-z0-9']+")
_GENERIC = frozenset({"get", "set", "do", "make", "the", "a", "an", "my", "tool", "info"})


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


class IntentStage:
    """Chooses the tool a caller's words ask for, or None (chit-chat, a question no tool
    answers). Deterministic and cheap: run it on every user turn."""

    def __init__(self, tools: Sequence[Tool], cues: Sequence[Cue] = DEFAULT_CUES,
                 threshold: float = 2.0) -> None:
        self.threshold = threshold
        self._entries: list[tuple[str, list[tuple[re.Pattern[str], float]]]] = []
        for t in tools:
            name_words = set(re.split(r"[_\-]+", t.name.lower()))
            patterns: list[tuple[re.Pattern[str], float]] = []
            for cue in cues:
                if cue.names & (name_words | {t.name.lower()}):
                    patterns += [(_phrase(p), cue.weight) for p in cue.phrases]
            cued = {p.pattern for p, _ in patterns}
            for w in sorted(name_words - _GENERIC):
                # the tool's own name said aloud ("transfer", "refund"), unless a cue says
                # it already: "book" twice would tie "move my book in ..." with reschedule
                if len(w) > 2 and _phrase(w).pattern not in cued:
                    patterns.append((_phrase(w.replace("_", " ")), 2.0))
            self._entries.append((t.name, patterns))

    def scores(self, text: str) -> dict[str, float]:
        said = " ".join(_words(misheard(text)))  # "at free" is a time, not availability
        return {name: sum(w for p, w in patterns if p.search(said))
                for name, patterns in self._entries}

    def choose(self, text: str) -> str | None:
        scores = self.scores(text)
        if not scores:
            return None
        best = max(scores, key=lambda n: scores[n])  # ties: the first tool listed
        return best if scores[best] >= self.threshold else None

    def cue_words(self, text: str, tool: str) -> set[str]:
        """The words of ``text`` that asked for ``tool`` (its cue phrases found there)."""
        said = " ".join(_words(text))
        out: set[str] = set()
        for name, patterns in self._entries:
            if name == tool:
                for p, _ in patterns:
                    for m in p.finditer(said):
                        out.update(m.group(0).split())
        return out


def _phrase(phrase: str) -> re.Pattern[str]:
    return re.compile(r"(?<![a-z0-9'])" + re.escape(" ".join(_words(phrase)))
                      + r"(?![a-z0-9'])")


# Words that are never a field's value on their own, nor its first or last word.
_STOP_WORDS = """a an the i i'd i'm i'll i've me my mine you your we our it it's its is are am
was were be been do does did can could would will shall should may might must to for of on in
at by with from and or but so if then that this these those there here what which when where
who how why any anything some something please thanks thank hi hello hey yeah yes no not okay
ok um uh er hmm oh well just like want wanna need get got have has had would like love
maybe around about one also too very really tomorrow today tonight morning afternoon evening
a.m. p.m. am pm name's what's that's there's here's let's who's how's where's it'd
you're we're they're come go noon midday half past quarter o'clock name number"""
_STOP = frozenset(_STOP_WORDS.split())


def spans(text: str, exclude: set[str], max_words: int = 3) -> list[str]:
    """The runs of up to ``max_words`` of the caller's words that may be a field's value: no
    digits, not starting or ending with a filler word, none of ``exclude`` (the words that
    chose the tool, or that the rules already read), and none inside a longer one (given
    "beard" and "beard trim" the model stops early). In the caller's order."""
    words = [w for w in _words(text)]
    out: list[str] = []
    for n in range(max_words, 0, -1):
        for i in range(len(words) - n + 1):
            run = words[i:i + n]
            if (_stop(run[0]) or _stop(run[-1]) or any(w in exclude for w in run)
                    or any(c.isdigit() for w in run for c in w)):
                continue
            span = " ".join(run)
            if span not in out and not any(f" {span} " in f" {o} " for o in out):
                out.append(span)
    said = " ".join(words)
    return sorted(out, key=lambda o: said.find(o))


def _stop(word: str) -> bool:
    return word in _STOP or len(word) < 2  # "p.m." is "p" and "m" as words


def span_grammar(fields: int, candidates: Sequence[str]) -> str:
    """A llama.cpp grammar (GBNF): ``fields`` lines, each one of ``candidates``. The model
    chooses among the caller's words and cannot invent any; bare values, not JSON, because
    every token costs a step of decoding even where the grammar leaves no choice."""
    def lit(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    body = ' "\\n" '.join(["value"] * fields)
    return f"root ::= {body}\nvalue ::= {' | '.join(lit(c) for c in candidates)}\n"


def parse_spans(raw: str, fields: Sequence[str]) -> dict[str, str]:
    """The values a :func:`span_grammar` reply gives ``fields`` (fewer if cut short)."""
    return {f: v.strip() for f, v in zip(fields, raw.split("\n"), strict=False) if v.strip()}


def arguments_instruction(tool: Tool, only: Sequence[str] | None = None) -> str:
    """The system message after the conversation that asks for ``tool``'s arguments (those
    named in ``only``, if given)."""
    fields = "; ".join(f"{k}: {v.get('description', v.get('type', ''))}"
                       for k, v in _properties(tool).items() if only is None or k in only)
    return (f"Fill in the fields for {tool.name} ({tool.description}) with the caller's own"
            f" words. Fields: {fields}. Answer with JSON only.")


def tools_instruction(tools: Sequence[Tool]) -> str:
    """The tools described in the prompt, for a model that may call one in plain text."""
    lines = [f'- {t.name}: {t.description} Arguments: {json.dumps(_properties(t))}'
             for t in tools]
    return ("You can use these tools:\n" + "\n".join(lines) + "\nTo use one, answer only"
            ' <tool_call>{"name": "TOOL", "arguments": {...}}</tool_call>. If no tool is'
            " needed, answer the caller in one short sentence.")


_CALL = re.compile(r"\{.*\}", re.S)


def parse_tool_reply(text: str, tools: Sequence[Tool]) -> tuple[str, dict[str, Any]] | None:
    """The tool call in a plain-text reply (``<tool_call>{...}</tool_call>`` or a bare JSON
    object naming a known tool), or None when the reply is text for the caller."""
    names = {t.name for t in tools}
    match = _CALL.search(text)
    if match is None:
        return None
    try:
        value = json.loads(match.group(0))
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    args = value.get("arguments", {})
    if name not in names or not isinstance(args, dict):
        return None
    return str(name), args


def choice_schema(tools: Sequence[Tool]) -> dict[str, Any]:
    """One JSON schema for the whole choice: ``{"tool": NAME, "arguments": {...}}`` for each
    tool, or ``{"tool": "none"}``."""
    options: list[dict[str, Any]] = [{
        "type": "object", "properties": {"tool": {"const": t.name},
                                         "arguments": dict(t.parameters)},
        "required": ["tool", "arguments"]} for t in tools]
    options.append({"type": "object", "properties": {"tool": {"const": "none"}},
                    "required": ["tool"]})
    return {"oneOf": options}


def choice_instruction(tools: Sequence[Tool]) -> str:
    lines = [f"- {t.name}: {t.description}" for t in tools]
    return ("Decide whether the caller's last words need one of these tools:\n"
            + "\n".join(lines)
            + '\nAnswer with JSON: {"tool": NAME, "arguments": {...}}, or {"tool": "none"}.')


def clean_arguments(tool: Tool, args: Mapping[str, Any]) -> dict[str, Any]:
    """Drop what the schema does not name and the fields the model left empty."""
    props = _properties(tool)
    return {k: v for k, v in args.items()
            if k in props and v not in ("", None) and not (isinstance(v, str) and not v.strip())}


def _properties(tool: Tool) -> dict[str, Any]:
    props = tool.parameters.get("properties") or {}
    return dict(props) if isinstance(props, Mapping) else {}
