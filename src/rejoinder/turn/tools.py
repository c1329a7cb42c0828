"""The reply's tool loop, and prefetch of read-only tools.

    LLM round ─► text deltas spoken at once ─► tool calls (all of the round, concurrently)
        ▲                                          │ a filler if slower than filler_after_s
        └──────── tool results (JSON) ◄────────────┘ an apology if one failed: the reply ends

Rounds are bounded (``max_rounds``): the last round offers no tools, so the model answers.
Each call is limited by its tool's ``timeout_s``.

**Side effects.** A tool with ``side_effects`` never runs before the turn is confirmed: a
speculative reply that asks for one waits for confirmation first (and a speculation the
caller talks over is cancelled before it ran). Once started, such a call is owned by the
conversation, not the reply: barge-in cancels the reply's wait, but the call completes
and is recorded, and its result joins the history so the next reply knows it happened.

**Prefetch.** A read-only tool may run before the turn is confirmed: asked for by the
speculative reply, or by the LLM reading the caller's words while they still speak
(:func:`prefetch_from_words`). Its task waits in the conversation's :class:`Prefetch` by
(name, arguments); a confirmed reply that asks for the same call takes the result (a
hit), one that asks for a call nobody started runs it (a miss), and whatever nobody took
when the turn ends is dropped (wasted).

Events (``{"type": "tool", ...}``) carry the tool's name, status and time, never its
arguments or result (personal data); the call's record gets the arguments, redacted,
through the conversation's ``records`` sinks.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python

from rejoinder.core.clock import Clock
from rejoinder.core.errors import ProviderError
from rejoinder.core.redact import redact
from rejoinder.providers.base import LLM, ChatMessage
from rejoinder.tools.base import Tool, ToolCall
from rejoinder.tools.box import Toolbox

if TYPE_CHECKING:
    from rejoinder.turn.engine import Conversation

log = logging.getLogger(__name__)

Outcome = tuple[str, Any]  # (status, result): "ok" | "error" | "timeout"


async def invoke(tool: Tool, call: ToolCall, clock: Clock) -> tuple[Outcome, float]:
    """Run one call within its tool's time limit: ((status, result), milliseconds).
    Never raises but for a cancellation; a failure's detail goes to the debug log only
    by its type (the message may quote the caller's data)."""
    start = clock.now()
    try:
        args = call.args()
    except ValueError:
        return ("error", {"error": "the arguments are not a JSON object"}), 0.0
    try:
        async with asyncio.timeout(tool.timeout_s):
            result = await tool.invoke(args)
        outcome: Outcome = ("ok", to_jsonable_python(result, fallback=str))
    except TimeoutError:
        outcome = ("timeout", {"error": f"no answer within {tool.timeout_s:g} s"})
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.info("tool %s failed (%s)", tool.name, type(exc).__name__)
        outcome = ("error", {"error": "the tool failed"})
    return outcome, (clock.now() - start) * 1000.0


def result_text(result: Any) -> str:
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))


@dataclass
class _Prefetched:
    task: asyncio.Task[tuple[Outcome, float]]
    started: float


@dataclass
class Prefetch:
    """Read-only calls started before their turn was confirmed, by (name, arguments)."""

    clock: Clock
    stats: Counter[str]  # prefetch_hits, prefetch_misses, prefetch_wasted
    entries: dict[tuple[str, str], _Prefetched] = field(default_factory=dict)

    def start(self, tool: Tool, call: ToolCall) -> _Prefetched:
        key = call.key()
        entry = self.entries.get(key)
        if entry is None:
            log.debug("prefetch of %s started", tool.name)  # the name only: no arguments
            task = asyncio.create_task(invoke(tool, call, self.clock),
                                       name=f"prefetch-{tool.name}")
            entry = self.entries[key] = _Prefetched(task, self.clock.now())
        return entry

    def take(self, call: ToolCall) -> _Prefetched | None:
        return self.entries.pop(call.key(), None)

    def claim(self, calls: list[ToolCall]) -> None:
        """A speculative reply that used these results is confirmed: hits."""
        for call in calls:
            if self.take(call) is not None:
                self.stats["prefetch_hits"] += 1
        calls.clear()

    def drop(self) -> None:
        """The turn is over: nobody will take what is left."""
        for entry in self.entries.values():
            self.stats["prefetch_wasted"] += 1
            entry.task.cancel()
        self.entries.clear()


async def prefetch_from_words(conv: Conversation, box: Toolbox,
                              messages: list[ChatMessage]) -> None:
    """Ask the LLM what it would call for the caller's words so far, and start the
    read-only calls it names. Text means no tool: the request stops there. Side-effecting
    calls are never started here."""
    llm: LLM = conv.stack.llm
    stream = llm.stream(messages, box.offered())
    try:
        async for item in stream:
            if not isinstance(item, ToolCall):
                return
            tool = box.tools.get(item.name)
            if tool is not None and not tool.side_effects:
                conv.prefetch.start(tool, item)
    except ProviderError as exc:  # only a lost head start
        log.debug("tool prefetch failed: %s", exc)
    finally:
        await stream.aclose()


class ToolRound:
    """One round's calls for one reply: runs them, emits their events, and says the filler
    when the wait is long. ``say(text, filler)`` queues a clause for speech."""

    def __init__(self, conv: Conversation, box: Toolbox, turn: int,
                 confirmed: asyncio.Event, say: Callable[[str], None],
                 emit: Callable[[dict[str, object]], None],
                 claims: list[ToolCall]) -> None:
        self.claims = claims  # prefetched results this reply used before it was confirmed
        self.conv = conv
        self.box = box
        self.turn = turn
        self.confirmed = confirmed
        self.say = say
        self.emit = emit

    async def run(self, calls: list[ToolCall], filler_after_s: float | None) -> list[Outcome]:
        """The outcomes, in the order of ``calls``. ``filler_after_s``: the filler is said
        if results are still missing this long after the round started, or after the turn
        was confirmed if that came later (the caller waits only from then); None: no
        filler in this round."""
        waits = [asyncio.ensure_future(self._one(c)) for c in calls]
        confirmed = asyncio.ensure_future(self.confirmed.wait())
        try:
            if filler_after_s is not None:
                due = self.conv.clock.now() + filler_after_s
                pending: set[asyncio.Future[Any]] = set(waits)
                if not self.confirmed.is_set():
                    _, pending = await asyncio.wait(
                        [*waits, confirmed], return_when=asyncio.FIRST_COMPLETED)
                    while confirmed in pending and len(pending) > 1:
                        _, pending = await asyncio.wait(
                            pending, return_when=asyncio.FIRST_COMPLETED)
                    due = max(due, self.conv.clock.now() + filler_after_s)
                    pending.discard(confirmed)
                if pending:
                    remaining = due - self.conv.clock.now()
                    _, pending = await asyncio.wait(pending, timeout=max(remaining, 0.0))
                if pending:
                    self.say(self.box.filler)
            return list(await asyncio.gather(*waits))
        finally:
            confirmed.cancel()
            for w in waits:
                w.cancel()

    async def _one(self, call: ToolCall) -> Outcome:
        conv, tool = self.conv, self.box.tools.get(call.name)
        if tool is None:
            self._event(call, "error", 0.0, prefetched=False)
            return "error", {"error": f"there is no tool named {call.name!r}"}
        if tool.side_effects:
            await self.confirmed.wait()  # never on speculation
            self._event(call, "started", None, prefetched=False)
            # Owned by the conversation: a barge-in cancels this wait, not the call.
            task = conv.spawn_tool(invoke(tool, call, conv.clock), tool.name)
            try:
                (status, result), ms = await asyncio.shield(task)
            except asyncio.CancelledError:
                task.add_done_callback(lambda t: self._late(call, t))
                raise
            self._event(call, status, ms, prefetched=False)
            return status, result
        entry = conv.prefetch.take(call)
        if entry is not None:  # started before this reply asked, from the caller's words
            conv.stats["prefetch_hits"] += 1
            (status, result), ms = await entry.task
            self._event(call, status, ms, prefetched=True)
            return status, result
        if not self.confirmed.is_set() and self.box.prefetch:  # the speculative reply
            entry = conv.prefetch.start(tool, call)
            (status, result), ms = await asyncio.shield(entry.task)
            if self.confirmed.is_set():
                if conv.prefetch.take(call) is not None:
                    conv.stats["prefetch_hits"] += 1
            else:  # stays for the next reply if the caller goes on; taken at confirmation
                self.claims.append(call)
            self._event(call, status, ms, prefetched=True)
            return status, result
        await self.confirmed.wait()  # prefetch off: nothing runs before the turn is confirmed
        conv.stats["prefetch_misses"] += 1
        self._event(call, "started", None, prefetched=False)
        (status, result), ms = await invoke(tool, call, conv.clock)
        self._event(call, status, ms, prefetched=False)
        return status, result

    def _late(self, call: ToolCall, task: asyncio.Task[tuple[Outcome, float]]) -> None:
        """A side-effecting call that finished after its reply was cancelled: recorded,
        and its result joins the history."""
        if task.cancelled():
            return
        (status, result), ms = task.result()
        self._event(call, status, ms, prefetched=False)
        self.conv.tool_exchange_late(call, result_text(result))

    def _event(self, call: ToolCall, status: str, ms: float | None, *,
               prefetched: bool) -> None:
        event: dict[str, object] = {"type": "tool", "turn": self.turn, "name": call.name,
                                    "status": status, "prefetched": prefetched}
        if ms is not None:
            event["ms"] = round(ms, 1)
        self.emit(event)
        if status != "started":
            self.conv.record({**event, "type": "tool_record",
                              "arguments": redact(call.arguments)})


async def run_tool_rounds(
        conv: Conversation, box: Toolbox, turn: int, confirmed: asyncio.Event,
        messages: list[ChatMessage],
        speak_round: Callable[[list[ChatMessage], bool], Awaitable[tuple[str, list[ToolCall]]]],
        say: Callable[[str, bool], None], emit: Callable[[dict[str, object]], None],
        exchange: list[ChatMessage], claims: list[ToolCall]) -> None:
    """The loop. ``speak_round(messages, offer_tools)`` streams one LLM round, speaking its
    text, and returns (text, tool calls). ``exchange`` receives the assistant tool-call
    messages and the tool results, for the history. A failed or timed-out call gets the
    apology said and ends the reply."""
    filler_said = False
    for round_no in range(box.max_rounds + 1):
        text, calls = await speak_round(messages, round_no < box.max_rounds)
        if not calls:
            return
        filler_after = box.filler_after_s if box.filler_after_s > 0 and not filler_said else None

        def filler(line: str) -> None:
            nonlocal filler_said
            filler_said = True
            say(line, True)

        rnd = ToolRound(conv, box, turn, confirmed, filler, emit, claims)
        outcomes = await rnd.run(calls, filler_after)
        step = [ChatMessage("assistant", text, tool_calls=tuple(calls))]
        step += [ChatMessage("tool", result_text(result), tool_call_id=c.id)
                 for c, (_, result) in zip(calls, outcomes, strict=True)]
        exchange.extend(step)
        messages = [*messages, *step]
        if any(status != "ok" for status, _ in outcomes):
            say(box.apology, False)
            return
