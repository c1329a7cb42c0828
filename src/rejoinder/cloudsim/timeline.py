"""Keep the simulated services on schedule.

The fakes wait relative to when they resume (``sleep(interval)`` after each token), so every
late wake-up and every write the server does between two waits would add to the profile's
pacing: ~2 ms a token at 50 tokens/s on a busy machine, ~30 ms over a reply. A
:class:`Timeline` is the clock one response runs on: each sleep ends where the previous one
was *due* to end plus its own length, so token *i* leaves at ``start + ttft + i / rate``
however long the work in between took (a stall is caught up by sending without waiting).
"""

from __future__ import annotations

from rejoinder.core.clock import Clock


class Timeline(Clock):
    """A clock whose sleeps follow a fixed schedule that starts at ``base.now()``."""

    def __init__(self, base: Clock) -> None:
        self._base = base
        self._due = base.now()

    def now(self) -> float:
        return self._base.now()

    def wall(self) -> float:
        return self._base.wall()

    async def sleep(self, seconds: float) -> None:
        self._due += seconds
        delay = self._due - self._base.now()
        if delay > 0:
            await self._base.sleep(delay)
