"""A circuit breaker per provider backend, and the counts a chain of backends keeps.

A backend that failed ``failures`` times within ``window_s`` is *open*: no request
reaches it for ``cooldown_s``. Then it is *half open*: the next request is a probe (one
at a time); its success *closes* the breaker, its failure opens it for another
cool-down. A request cancelled by the caller (barge-in) is neither: a probe cancelled
that way lets the next request probe again.

Every change of state is logged (with the call id of the call whose request caused it,
from :mod:`rejoinder.observability.logs`) and counted in :class:`FallbackStats`.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass

from rejoinder.core.clock import Clock

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(frozen=True)
class BreakerOptions:
    failures: int = 3  # failures within window_s that open the breaker
    window_s: float = 60.0
    cooldown_s: float = 30.0  # open this long, then one request probes it


class FallbackStats:
    """What a chain of backends counts, read by the metrics at scrape time.

    ``counts[(event, kind, backend, detail)]``: event "fallback" (detail: the failure,
    "failed" | "timeout" | "unavailable", or "open" for a backend skipped while its
    breaker was open), "breaker" (detail: the state entered) or "timeout" (detail "").
    """

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str, str]] = Counter()

    def count(self, event: str, kind: str, backend: str, detail: str = "") -> None:
        self.counts[(event, kind, backend, detail)] += 1


class CircuitBreaker:
    def __init__(self, kind: str, backend: str, options: BreakerOptions | None = None,
                 clock: Clock | None = None, stats: FallbackStats | None = None) -> None:
        self.kind = kind
        self.backend = backend
        self.options = options or BreakerOptions()
        self.clock = clock or Clock()
        self.stats = stats or FallbackStats()
        self.state = CLOSED
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self._probing = False

    def allow(self) -> bool:
        """May a request go to this backend now? (In half-open state, True once: the
        caller of ``allow`` then owes :meth:`succeeded`, :meth:`failed` or :meth:`released`.)"""
        if self.state == OPEN:
            if self.clock.now() - self._opened_at < self.options.cooldown_s:
                return False
            self._move(HALF_OPEN)
        if self.state == HALF_OPEN:
            if self._probing:
                return False
            self._probing = True
        return True

    def succeeded(self) -> None:
        self._probing = False
        if self.state == HALF_OPEN:
            self._failures.clear()
            self._move(CLOSED)

    def failed(self) -> None:
        now = self.clock.now()
        self._probing = False
        if self.state == HALF_OPEN:
            self._open(now)
            return
        if self.state == OPEN:
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.options.window_s:
            self._failures.popleft()
        if len(self._failures) >= self.options.failures:
            self._open(now)

    def released(self) -> None:
        """The request ended without a verdict (cancelled): a probe may go again."""
        self._probing = False

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._failures.clear()
        self._move(OPEN)

    def _move(self, state: str) -> None:
        log.warning("%s backend %s: circuit %s -> %s%s", self.kind, self.backend, self.state,
                    state, f" for {self.options.cooldown_s:g} s" if state == OPEN else "")
        self.state = state
        self.stats.count("breaker", self.kind, self.backend, state)
