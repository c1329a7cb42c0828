"""The LLM chain: whole clauses relayed, the next backend continuing from them."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from rejoinder.core.clock import Clock
from rejoinder.core.errors import ProviderError
from rejoinder.providers.base import LLM, ChatMessage, StreamItem
from rejoinder.providers.breaker import FallbackStats
from rejoinder.providers.fallback.chain import UNLIMITED_S, Backend, Chain
from rejoinder.tools.base import Tool, ToolCall
from rejoinder.turn.clauses import ClauseSplitter

log = logging.getLogger(__name__)


_WORD = re.compile(r"[^\W_]+")


def _same(clause: str) -> str:
    return " ".join(_WORD.findall(clause.lower()))


class _ClauseGate:
    """Lets text through only at clause ends; while ``said`` clauses (already relayed
    by a backend that failed) come again at the start, drops them."""

    def __init__(self, said: Sequence[str]) -> None:
        self._splitter = ClauseSplitter(min_words=1)
        self._raw = ""
        self._said = [_same(c) for c in said]
        self._next = 0  # index of the said clause a repeat would match next
        self.clauses: list[str] = []  # the clauses let through

    def push(self, delta: str) -> str:
        self._raw += delta
        clauses = self._splitter.push(delta)
        if not clauses:
            return ""
        cut = len(self._raw) - len(self._splitter.pending)
        head, self._raw = self._raw[:cut], self._raw[cut:]
        return self._let(head, clauses)

    def flush(self) -> str:
        head, self._raw = self._raw, ""
        return self._let(head, self._splitter.flush())

    def _let(self, head: str, clauses: list[str]) -> str:
        if self._next < len(self._said):
            keys = [_same(c) for c in clauses]
            if keys == self._said[self._next:self._next + len(keys)]:
                self._next += len(keys)
                return ""  # a restart: said already
        self._next = len(self._said)  # new words: no repeat can follow any more
        self.clauses.extend(clauses)
        return head


def _joined(relayed: str, text: str) -> str:
    """``text`` to follow ``relayed``, a space between them (a backend continuing another's
    reply starts without one)."""
    if text and relayed and not relayed[-1].isspace() and not text[0].isspace():
        return " " + text
    return text


def _words(messages: Sequence[ChatMessage]) -> int:
    last = next((m for m in reversed(messages) if m.role == "user"), None)
    return len(last.content.split()) if last is not None else 0


class FallbackLLM(LLM):
    """A chat model served by the first backend that answers, chosen per request by the
    backends' rules (see :meth:`order`)."""

    first_item_timeout_s = UNLIMITED_S
    stream_idle_timeout_s = UNLIMITED_S
    redact = False  # each backend redacts what it receives (llm.redact)

    def __init__(self, backends: Sequence[Backend[LLM]], stats: FallbackStats | None = None,
                 clock: Clock | None = None) -> None:
        self.stats = stats or FallbackStats()
        self.clock = clock or Clock()
        self.chain = Chain("llm", backends, self.stats, self.clock)
        self.name = f"chain:{self.chain.backends[0].name}"

    def order(self, messages: Sequence[ChatMessage], tools: bool) -> list[Backend[LLM]]:
        """The backends for one request: first those whose rule it meets (tools offered
        for ``route = "tools"``, the caller's message short enough for ``max_words``),
        then those without a rule, then those whose rule it does not meet; each group in
        the configured order."""
        words = _words(messages)
        verdicts = [(b, b.rule(tools, words)) for b in self.chain.backends]
        return [b for want in (True, None, False) for b, v in verdicts if v is want]

    async def _stream(self, messages: list[ChatMessage],
                      tools: Sequence[Tool] = ()) -> AsyncIterator[StreamItem]:
        said: list[str] = []  # clauses relayed so far, by any backend
        relayed = ""
        last: ProviderError | None = None
        for b in self.chain.allowed(self.order(messages, bool(tools))):
            ask = messages if not relayed else \
                [*messages, ChatMessage("assistant", relayed.strip())]
            gate = _ClauseGate(said)
            called = False
            started = self.clock.now()
            settled = False
            try:
                llm = await b.get()
                async with aclosing(llm.stream(ask, tools)) as items:
                    async for item in items:
                        if isinstance(item, ToolCall):
                            text = _joined(relayed, gate.flush())
                            if text:
                                relayed += text
                                yield text
                            called = True
                            yield item
                            continue
                        text = _joined(relayed, gate.push(item))
                        if text:
                            relayed += text
                            yield text
                text = _joined(relayed, gate.flush())
                if text:
                    relayed += text
                    yield text
                settled = True
                b.breaker.succeeded()
                return
            except ProviderError as exc:
                settled = True
                said.extend(gate.clauses)
                self.chain.failed(b, exc, started,
                                  f", {len(said)} clauses said" if said else "")
                if called:
                    log.warning("llm stream broke after a tool call; the reply goes on "
                                "with the calls it has")
                    return
                last = exc
            finally:
                if not settled:
                    b.breaker.released()
        raise self.chain.exhausted(last)

    def _stream_json(self, messages: list[ChatMessage], schema: dict[str, Any],
                     max_tokens: int) -> AsyncIterator[Any]:
        return self._json(messages, schema, max_tokens)

    async def _json(self, messages: list[ChatMessage], schema: dict[str, Any],
                    max_tokens: int) -> AsyncIterator[str]:
        async def ask(b: Backend[LLM]) -> str:
            return await (await b.get()).complete_json(messages, schema, max_tokens)

        yield await self.chain.first(ask)

    def _first(self) -> LLM | None:
        """The first backend in order whose circuit is closed, if loaded (no probe is
        spent on the optional questions: prefill, turn end)."""
        for b in self.chain.backends:
            if b.breaker.state == "closed":
                return b.provider
        return None

    async def _prefill(self, messages: list[ChatMessage]) -> None:
        llm = self._first()
        if llm is not None:
            await llm.prefill(messages)

    async def _turn_end_p(self, messages: list[ChatMessage]) -> float | None:
        llm = self._first()
        return await llm.turn_end_p(messages) if llm is not None else None

    async def warm(self, messages: list[ChatMessage]) -> None:
        await self.chain.warm(lambda p: p.warm(messages))

    async def close(self) -> None:
        await self.chain.close()


# -- text to speech ------------------------------------------------------------------
