"""A backend of a chain, and the chain: the order, the breakers, the counts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Generic, TypeVar

from rejoinder.core.clock import Clock
from rejoinder.core.errors import ProviderError, ProviderUnavailable
from rejoinder.providers.base import LLM, STT, TTS
from rejoinder.providers.breaker import CircuitBreaker, FallbackStats

log = logging.getLogger(__name__)

P = TypeVar("P", STT, LLM, TTS)
T = TypeVar("T")

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


class Chain(Generic[P]):
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

    async def first(self, ask: Callable[[Backend[P]], Awaitable[T]]) -> T:
        """The answer of the first allowed backend that gives one (``ask(backend)``): each
        that fails is noted and the next one asked; when none answers, the last error."""
        last: ProviderError | None = None
        for b in self.allowed():
            started = self.clock.now()
            try:
                answer = await ask(b)
            except ProviderError as exc:
                self.failed(b, exc, started)
                last = exc
                continue
            except BaseException:
                b.breaker.released()
                raise
            b.breaker.succeeded()
            return answer
        raise self.exhausted(last)

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
