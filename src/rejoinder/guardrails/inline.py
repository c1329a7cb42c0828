"""The guardrails of one reply (:class:`ReplyGuard`), called from ``turn/reply.py``.

    caller's words ─► admit() ─► LLM ─► clause ─► started(clause) ──┐ (checks run from here)
                                                 speaker: screen(clause) ─► TTS ─► playout

- :meth:`ReplyGuard.admit`: before the LLM request, the inline guardrails check the
  caller's words (a blocked turn is answered with the safe line, no LLM request); the
  others start alongside the LLM and can only flag.
- :meth:`ReplyGuard.started`: a clause is complete; every guardrail starts checking it
  at once, while the clauses before it are still being synthesised and played.
- :meth:`ReplyGuard.screen`: the speaker is about to synthesise a clause: the safe line
  if a check blocked it (the speaker says it and the reply stops), else None.

Events (``{"type": "guardrail", "turn", "action", "rule"}``) are held until the reply
is confirmed (:meth:`ReplyGuard.confirm`): a speculative reply the caller talked over
leaves none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from rejoinder.guardrails.base import Finding, Guardrail

Event = dict[str, object]


class ReplyGuard:
    def __init__(self, guardrails: Sequence[Guardrail], turn: int, safe_line: str,
                 events: Callable[[Event], None], *, confirmed: bool = True) -> None:
        self.guardrails = tuple(guardrails)
        self.turn = turn
        self.safe_line = safe_line
        self.blocked = asyncio.Event()  # a clause was blocked: the reply stops
        self.findings: list[Finding] = []
        self._events = events
        self._confirmed = confirmed
        self._held: list[Event] = []
        self._cut: int | None = None  # where the blocked clause began in the reply's text
        self._checks: dict[str, list[tuple[asyncio.Task[list[Finding]], int | None]]] = {}
        self._background: set[asyncio.Task[list[Finding]]] = set()
        self._inputs: list[asyncio.Task[list[Finding]]] = []

    # -- the caller's turn -------------------------------------------------------------
    async def admit(self, text: str) -> str | None:
        """Check the caller's words before the LLM reads them: the safe line if they are
        blocked (the reply is that line alone), else None."""
        found: list[Finding] = []
        for guard in self.guardrails:
            if guard.inline:
                found += await guard.check_input(text)
            else:
                self._inputs.append(self._spawn(self._flag_input(guard, text)))
        self._record(found)
        return self.safe_line if any(f.action == "blocked" for f in found) else None

    async def _flag_input(self, guard: Guardrail, text: str) -> list[Finding]:
        found = [Finding("flagged", f.rule) for f in await guard.check_input(text)]
        self._record(found)
        return found

    async def settle(self) -> None:
        """Wait for the caller-turn checks still running (each bounded by its timeout),
        so that their findings join this turn's record."""
        if pending := [t for t in self._inputs if not t.done()]:
            await asyncio.wait(pending)

    # -- the agent's clauses -----------------------------------------------------------
    def started(self, clause: str, offset: int | None = None) -> None:
        """``clause`` is queued for speech (at ``offset`` in the reply's text): start
        checking it now."""
        if clause != self.safe_line:
            task = self._spawn(self._check(clause))
            self._checks.setdefault(clause, []).append((task, offset))

    async def screen(self, clause: str) -> str | None:
        """The safe line if ``clause`` must not be said (the rest of the reply is then
        cancelled: :attr:`blocked`), else None."""
        if clause == self.safe_line:
            return None
        queued = self._checks.get(clause)
        task, offset = queued.pop(0) if queued else (self._spawn(self._check(clause)), None)
        if queued == []:
            del self._checks[clause]
        found = await task
        self._record(found)
        if not any(f.action == "blocked" for f in found):
            return None
        self._cut = offset
        self.blocked.set()
        self.close()
        return self.safe_line

    def said(self, text: str) -> str:
        """The reply's text as spoken: after a block, what came before the blocked
        clause and the safe line (idempotent)."""
        if not self.blocked.is_set() or self._cut is None:
            return text
        return f"{text[:self._cut]}{self.safe_line} "

    async def _check(self, clause: str) -> list[Finding]:
        results = await asyncio.gather(*(g.check_output(clause) for g in self.guardrails))
        return [f for found in results for f in found]

    # -- events and cleanup --------------------------------------------------------------
    def confirm(self) -> None:
        """The reply is confirmed: the events it held back go out."""
        self._confirmed = True
        held, self._held = self._held, []
        for event in held:
            self._events(event)

    def _record(self, found: list[Finding]) -> None:
        for f in found:
            self.findings.append(f)
            event: Event = {"type": "guardrail", "turn": self.turn, "action": f.action,
                            "rule": f.rule}
            if self._confirmed:
                self._events(event)
            else:
                self._held.append(event)

    def _spawn(self, coro: Coroutine[Any, Any, list[Finding]]) -> asyncio.Task[list[Finding]]:
        task = asyncio.create_task(coro, name=f"guardrail-{self.turn}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def close(self) -> None:
        """Cancel every check still running (the reply ended or was cancelled)."""
        for task in list(self._background):
            task.cancel()
        self._checks.clear()
