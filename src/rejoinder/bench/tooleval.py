"""Tool calling on the embedded model, scored on the booking line's test set (``toolset``).

``python -m rejoinder.bench.tooleval [--modes plain,intent,...] [--json OUT]``

Each way of calling tools (``SmolLMOptions.tool_mode``) gets every caller turn of both parts
(``tune`` and ``held_out``) after the agent's system prompt, through ``LLM.stream`` with the
booking tools, as the reply loop asks. Scored per part:

- ``choice``: the right tool, or no tool where none is needed;
- ``args``: of the turns that need a tool, the right tool with exactly the right arguments
  (``toolset.args_match``);
- ``exact``: every turn right whole (choice, and the arguments when a tool is called).

Timed: ``decide_ms``, from the request to the first thing the stream yields (the
:class:`ToolCall`, or the first words of a reply), p50 and p95 over the turns, against
``plain`` (the same turns with no tools offered: the first token). What a mode adds to a tool
turn is the difference. The model's prompt cache holds the system prompt, as in a call.
Redaction is off unless ``--redact`` (with it, a phone number reaches the model as a
placeholder and is never an argument; the set holds none, so the scores are the same).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rejoinder.bench.toolset import PARTS, Case, agent_tools, args_match, booking_tools
from rejoinder.providers.base import LLM, ChatMessage
from rejoinder.providers.local.toolchoice import IntentStage
from rejoinder.tools.base import Tool, ToolCall

SYSTEM = ("You are the receptionist of a hair salon on the phone. Help callers book, move,"
          " cancel and check appointments. Answer in one short sentence.")
MODES = ("intent", "intent_model", "grammar", "prompt")


@dataclass
class Outcome:
    text: str
    expected: str | None
    tool: str | None
    args: dict[str, Any]
    ms: float
    choice_ok: bool
    exact: bool


@dataclass
class Score:
    outcomes: list[Outcome] = field(default_factory=list)
    scores_args: bool = True  # False: the intent stage alone, which writes no arguments

    def summary(self) -> dict[str, Any]:
        o = self.outcomes
        needing = [x for x in o if x.expected is not None]
        ms = sorted(x.ms for x in o)
        tool_ms = sorted(x.ms for x in o if x.tool is not None)
        return {
            "turns": len(o),
            "choice": _share(sum(x.choice_ok for x in o), len(o)),
            "args": (_share(sum(x.exact for x in needing), len(needing))
                     if self.scores_args else None),
            "exact": _share(sum(x.exact for x in o), len(o)) if self.scores_args else None,
            "decide_ms_p50": round(_pct(ms, 50), 1),
            "decide_ms_p95": round(_pct(ms, 95), 1),
            "tool_call_ms_p50": round(_pct(tool_ms, 50), 1) if tool_ms else None,
        }


def _share(n: int, d: int) -> float:
    return round(n / d, 3) if d else 0.0


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def judge(case: Case, tool: str | None, args: dict[str, Any], ms: float) -> Outcome:
    choice_ok = tool == case.tool
    exact = choice_ok and (case.tool is None or args_match(case.args, args))
    return Outcome(case.text, case.tool, tool, args, ms, choice_ok, exact)


async def first_item(llm: LLM, case: Case, tools: list[Tool]) -> tuple[str | None,
                                                                          dict[str, Any], float]:
    """What the stream yields first for ``case``, and how long it took (ms)."""
    messages = [ChatMessage("system", SYSTEM), ChatMessage("user", case.text)]
    start = time.perf_counter()
    stream = llm.stream(messages, tools)
    try:
        async for item in stream:
            ms = (time.perf_counter() - start) * 1000
            if isinstance(item, ToolCall):
                try:
                    return item.name, item.args(), ms
                except ValueError:
                    return item.name, {}, ms
            return None, {}, ms
    finally:
        await stream.aclose()
    return None, {}, (time.perf_counter() - start) * 1000


async def run_mode(mode: str, redact: bool, tools: list[Tool],
                   every: int = 1) -> dict[str, Score]:
    from rejoinder.providers.local.smollm import SmolLM, SmolLMOptions

    tools = tools if mode != "plain" else []
    llm = SmolLM(SmolLMOptions(tool_mode="intent" if mode == "plain" else mode))  # type: ignore[arg-type]
    llm.redact = redact
    llm.first_item_timeout_s = 120.0  # measured, not limited: a loaded machine is slow
    try:
        await llm.warm([ChatMessage("system", SYSTEM)])
        scores: dict[str, Score] = {}
        for part, cases in PARTS.items():
            score = scores[part] = Score()
            for case in cases[::every]:
                tool, args, ms = await first_item(llm, case, tools)
                score.outcomes.append(judge(case, tool, args, ms))
        return scores
    finally:
        llm.close()


def run_intent_only(tools: list[Tool]) -> dict[str, Score]:
    """The intent stage alone (no model): its choice, and its time."""
    stage = IntentStage(tools)
    scores: dict[str, Score] = {}
    for part, cases in PARTS.items():
        score = scores[part] = Score(scores_args=False)
        for case in cases:
            start = time.perf_counter()
            tool = stage.choose(case.text)
            ms = (time.perf_counter() - start) * 1000
            score.outcomes.append(judge(case, tool, {}, ms))
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rejoinder.bench.tooleval",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="plain,intent,intent_model,grammar,prompt",
                    help="comma-separated: plain (no tools: the baseline), intent,"
                         " intent_model, grammar,"
                         " prompt")
    ap.add_argument("--redact", action="store_true", help="redact the caller's words first")
    ap.add_argument("--enum", action="store_true",
                    help="the set's own schemas (the service an enum), not the agent's tools")
    ap.add_argument("--json", help="write every turn's outcome here")
    ap.add_argument("--every", type=int, default=1,
                    help="for the modes that decode with the model (grammar, prompt,"
                         " intent_model), only every Nth turn of each part (they take tens"
                         " of seconds a turn on a busy 2-core machine)")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in ("plain", *MODES):
            ap.error(f"unknown mode {m!r}")

    print(f"{'mode':<13} {'part':<9} {'turns':>5} {'choice':>7} {'args':>6} {'exact':>6}"
          f" {'p50 ms':>8} {'p95 ms':>8}", flush=True)
    results: dict[str, dict[str, Score]] = {}
    for m in ["intent-stage", *modes]:  # each mode printed (and saved) as it finishes
        tools = booking_tools() if args.enum else agent_tools()
        parts = results[m] = (run_intent_only(tools) if m == "intent-stage"
                              else asyncio.run(run_mode(
                                  m, args.redact, tools,
                                  args.every if m in ("grammar", "prompt", "intent_model")
                                  else 1)))
        for part, score in parts.items():
            s = score.summary()
            scored = [f"{s[k]:>6.1%}" if s[k] is not None else f"{'-':>6}"
                      for k in ("args", "exact")]
            print(f"{m:<13} {part:<9} {s['turns']:>5} {s['choice']:>7.1%} {' '.join(scored)}"
                  f" {s['decide_ms_p50']:>8.2f} {s['decide_ms_p95']:>8.2f}", flush=True)
        if args.json:
            out = {m: {part: {"summary": s.summary(),
                              "turns": [o.__dict__ for o in s.outcomes]}
                       for part, s in parts.items()} for m, parts in results.items()}
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
