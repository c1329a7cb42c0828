"""Chains of provider backends: a backend that fails is replaced by the next within the turn.

:class:`FallbackSTT`, :class:`FallbackLLM` and :class:`FallbackTTS` implement the
provider contracts by wrapping an ordered list of :class:`Backend` s
(``[[stt.backends]]``, ``[[llm.backends]]``, ``[[tts.backends]]``). A backend that
raises, drops its stream, or misses its first-item or idle deadline (its own limits,
enforced by its own base class) is replaced by the next one in the same request; one
whose :class:`~rejoinder.providers.breaker.CircuitBreaker` is open is skipped. The
chain itself sets no time limit: the backends' limits apply one after the other.

What the caller hears when a backend fails midway:

- **LLM**: text is relayed only up to the last clause end (a clause as the reply's
  splitter cuts them, at every comma or sentence end), so a reply that breaks leaves no
  half clause behind: the words after the last clause end are dropped, never spoken.
  The next backend is asked with the clauses already relayed as an assistant prefix
  (the last message) and continues from there; providers that restart the reply instead
  of continuing it are handled too: leading clauses equal to ones already relayed are
  dropped, so no clause is said twice. (Restarting on the fallback and skipping as many
  clauses would join two different replies.) Tool calls pass through untouched; a
  stream that breaks after a tool call ends there (the reply runs the calls it got and
  asks again, through the chain), so no call runs twice.
- **TTS**: a clause is synthesised by one backend; one that dies midway is replaced and
  the *whole clause* is said again by the next, resampled to the chain's rate (a
  listener hears the clause restart, as when a person stumbles, and loses no words;
  skipping it would lose what it said).
- **STT**: the first backend's session hears the utterance as it comes (its partial
  words are the chain's: a streaming remote STT's, the embedded Whisper's); the audio
  is kept too, and a backend that fails (a streaming one whose socket dropped) is
  replaced by the next with the same audio (its whole-utterance ``transcribe``).

Every fallback and timeout is logged (the call id comes with the log record) and
counted in :class:`~rejoinder.providers.breaker.FallbackStats`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing
from typing import Any, Generic, TypeVar

import numpy as np

from rejoinder.core.audio import PCM, Resampler
from rejoinder.core.clock import Clock
from rejoinder.core.errors import ProviderError, ProviderUnavailable
from rejoinder.providers.base import LLM, STT, TTS, ChatMessage, StreamItem, STTStream
from rejoinder.providers.breaker import CircuitBreaker, FallbackStats
from rejoinder.tools.base import Tool, ToolCall
from rejoinder.turn.clauses import ClauseSplitter

log = logging.getLogger(__name__)

P = TypeVar("P", STT, LLM, TTS)

#: The chain's own limit: none in practice; each backend's own limits apply in turn.
UNLIMITED_S = 86_400.0
ROUTES = ("", "tools")


class Backend(Generic[P]):
    """One provider of a chain, with its breaker and its routing rule.

    ``load``: build the provider on first use (the embedded models as a last resort:
    loading costs seconds once, paid by the first request that falls back to it).
    ``route = "tools"``: preferred for requests that offer tools; ``max_words``: preferred
    for requests whose caller message has at most that many words (0: no such rule).
    """

    def __init__(self, name: str, provider: P | None = None, *,
                 load: Callable[[], Awaitable[P]] | None = None,
                 breaker: CircuitBreaker | None = None, route: str = "",
                 max_words: int = 0, clock: Clock | None = None) -> None:
        if (provider is None) == (load is None):
            raise ValueError("give a provider or a way to load one")
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}")
        self.name = name
        self.provider: P | None = provider
        self.breaker = breaker or CircuitBreaker("provider", name, clock=clock)
        self.route = route
        self.max_words = max_words
        self.clock = clock or Clock()
        self._load: Callable[[], Awaitable[P]] | None = load
        self._loading = asyncio.Lock()

    async def get(self) -> P:
        if self.provider is None:
            async with self._loading:
                if self.provider is None:
                    assert self._load is not None
                    started = self.clock.now()
                    try:
                        self.provider = await self._load()
                    except ProviderError:
                        raise
                    except Exception as exc:  # a missing model or extra: this one is out
                        raise ProviderUnavailable(self.name, f"could not load: {exc!r}") \
                            from exc
                    log.warning("%s backend %s loaded on first use in %.2f s",
                                self.breaker.kind, self.name, self.clock.now() - started)
        return self.provider

    def rule(self, tools: bool, words: int) -> bool | None:
        """True: the request meets this backend's rule; False: it has one the request does
        not meet; None: it has no rule."""
        if not self.route and not self.max_words:
            return None
        return (self.route != "tools" or tools) and \
            (not self.max_words or words <= self.max_words)

    async def close(self) -> None:
        close = getattr(self.provider, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result


class _Chain(Generic[P]):
    """Walks the backends for one request: skips open breakers, notes failures."""

    def __init__(self, kind: str, backends: Sequence[Backend[P]], stats: FallbackStats,
                 clock: Clock) -> None:
        if not backends:
            raise ValueError(f"a {kind} chain needs at least one backend")
        self.kind = kind
        self.backends: list[Backend[P]] = list(backends)
        self.stats = stats
        self.clock = clock
        for b in self.backends:
            b.breaker.kind, b.breaker.stats = kind, stats

    def allowed(self, order: Sequence[Backend[P]] | None = None) -> Iterator[Backend[P]]:
        """The backends to try, in order, each let through by its breaker (the caller owes
        each one it is given a verdict on the breaker)."""
        for b in order or self.backends:
            if b.breaker.allow():
                yield b
            else:
                self.stats.count("fallback", self.kind, b.name, "open")
                log.info("%s backend %s skipped: its circuit is open", self.kind, b.name)

    def failed(self, backend: Backend[P], exc: ProviderError, started: float,
               what: str = "") -> None:
        backend.breaker.failed()
        self.stats.count("fallback", self.kind, backend.name, exc.failure)
        if exc.failure == "timeout":
            self.stats.count("timeout", self.kind, backend.name)
        log.warning("%s backend %s %s after %.3f s%s; trying the next", self.kind,
                    backend.name, exc.failure, self.clock.now() - started, what)

    def exhausted(self, last: ProviderError | None) -> ProviderError:
        if last is not None:
            return last
        return ProviderUnavailable(self.kind, "every backend's circuit is open")

    async def warm(self, warm: Callable[[P], Awaitable[None]]) -> None:
        """Warm every backend already loaded; one that fails is logged, not fatal, while
        another one warms."""
        last: ProviderError | None = None
        warmed = 0
        for b in self.backends:
            if b.provider is None:
                continue
            try:
                await warm(b.provider)
                warmed += 1
            except ProviderError as exc:
                last = exc
                log.warning("%s backend %s did not warm up: %s", self.kind, b.name,
                            exc.failure)
        if not warmed and last is not None:
            raise last

    async def close(self) -> None:
        for b in self.backends:
            await b.close()


# -- speech to text ------------------------------------------------------------------


class FallbackSTT(STT):
    """Speech to text from the first backend that answers."""

    timeout_s = UNLIMITED_S
    stream_idle_timeout_s = UNLIMITED_S

    def __init__(self, backends: Sequence[Backend[STT]], stats: FallbackStats | None = None,
                 clock: Clock | None = None) -> None:
        self.stats = stats or FallbackStats()
        self.clock = clock or Clock()
        self.chain = _Chain("stt", backends, self.stats, self.clock)
        first = self.chain.backends[0].provider
        self.name = f"chain:{self.chain.backends[0].name}"
        self.punctuates = first.punctuates if first is not None else False

    async def _transcribe(self, audio: PCM) -> str:
        return await self.transcribe_from(audio, None, None)

    async def transcribe_from(self, audio: PCM, lead: Backend[STT] | None,
                              session: STTStream | None) -> str:
        """The transcript from the first backend that answers: ``lead``'s own ``session``
        (it heard the audio as it came), the others the whole ``audio``."""
        last: ProviderError | None = None
        for b in self.chain.allowed():
            started = self.clock.now()
            try:
                if b is lead and session is not None:
                    text = await session.finish()
                else:
                    text = await (await b.get()).transcribe(audio)
            except ProviderError as exc:
                self.chain.failed(b, exc, started)
                last = exc
                continue
            except BaseException:
                b.breaker.released()
                raise
            b.breaker.succeeded()
            return text
        raise self.chain.exhausted(last)

    def stream(self) -> STTStream:
        return _FallbackSTTStream(self)

    async def warm(self) -> None:
        await self.chain.warm(lambda p: p.warm())

    async def close(self) -> None:
        await self.chain.close()


class _FallbackSTTStream:
    """The first backend's own session hears the utterance as it comes (incremental
    engines keep their head start); the audio is kept for the others."""

    def __init__(self, stt: FallbackSTT) -> None:
        self._stt = stt
        self._lead = stt.chain.backends[0]
        self._session = self._lead.provider.session() if self._lead.provider else None
        self._frames: list[PCM] = []
        self._speech = 0
        self._final: str | None = None

    async def push(self, frame: PCM, speech: bool | None = None) -> None:
        self._frames.append(frame)
        if speech or speech is None:
            self._speech += 1
            self._final = None
        if self._session is not None:
            await self._session.push(frame, speech)

    async def finish(self) -> str:
        if self._final is not None:
            return self._final
        speech = self._speech
        audio = np.concatenate(self._frames) if self._frames else np.zeros(0, np.int16)
        text = await self._stt.transcribe_from(audio, self._lead, self._session)
        if speech == self._speech:
            self._final = text
        return text

    def partial(self) -> str:
        return self._session.partial() if self._session is not None else ""

    def reset(self) -> None:
        self._frames = []
        self._speech = 0
        self._final = None
        if self._session is not None:
            self._session.reset()


# -- language model ------------------------------------------------------------------

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
        self.chain = _Chain("llm", backends, self.stats, self.clock)
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
        last: ProviderError | None = None
        for b in self.chain.allowed():
            started = self.clock.now()
            try:
                text = await (await b.get()).complete_json(messages, schema, max_tokens)
            except ProviderError as exc:
                self.chain.failed(b, exc, started)
                last = exc
                continue
            except BaseException:
                b.breaker.released()
                raise
            b.breaker.succeeded()
            yield text
            return
        raise self.chain.exhausted(last)

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


class FallbackTTS(TTS):
    """Speech from the first backend that answers, at the first backend's sample rate."""

    first_item_timeout_s = UNLIMITED_S
    stream_idle_timeout_s = UNLIMITED_S

    def __init__(self, backends: Sequence[Backend[TTS]], stats: FallbackStats | None = None,
                 clock: Clock | None = None, sample_rate: int | None = None) -> None:
        self.stats = stats or FallbackStats()
        self.clock = clock or Clock()
        self.chain = _Chain("tts", backends, self.stats, self.clock)
        first = self.chain.backends[0].provider
        self.name = f"chain:{self.chain.backends[0].name}"
        self.sample_rate = sample_rate or (first.sample_rate if first is not None else 22_050)

    async def _synthesize(self, text: str) -> AsyncIterator[PCM]:
        last: ProviderError | None = None
        for b in self.chain.allowed():
            started = self.clock.now()
            chunks = 0
            settled = False
            try:
                tts = await b.get()
                resample = Resampler(tts.sample_rate, self.sample_rate) \
                    if tts.sample_rate != self.sample_rate else None
                async with aclosing(tts.synthesize(text)) as audio:  # type: ignore[type-var]
                    async for chunk in audio:
                        chunks += 1
                        yield resample(chunk) if resample is not None else chunk
                if resample is not None:
                    tail = resample(np.zeros(0, np.int16), last=True)
                    if tail.size:
                        yield tail
                settled = True
                b.breaker.succeeded()
                return
            except ProviderError as exc:
                settled = True
                self.chain.failed(b, exc, started,
                                  f" ({chunks} chunks into a clause: said again whole)"
                                  if chunks else "")
                last = exc
            finally:
                if not settled:
                    b.breaker.released()
        raise self.chain.exhausted(last)

    async def warm(self) -> None:
        await self.chain.warm(lambda p: p.warm())

    async def close(self) -> None:
        await self.chain.close()


def chain_counts(*providers: object) -> Callable[[], Counter[tuple[str, str, str, str]]] | None:
    """What the chains among ``providers`` (a phrase cache looked through) have counted,
    read when called (at each scrape); None when none is a chain."""
    found: list[FallbackStats] = []
    for p in providers:
        p = getattr(p, "inner", p)
        if isinstance(p, FallbackSTT | FallbackLLM | FallbackTTS) \
                and all(p.stats is not s for s in found):
            found.append(p.stats)
    if not found:
        return None

    def counts() -> Counter[tuple[str, str, str, str]]:
        total: Counter[tuple[str, str, str, str]] = Counter()
        for s in found:
            total.update(s.counts)
        return total

    return counts
