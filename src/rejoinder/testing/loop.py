"""Check that work does not block the event loop."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType


class LoopTicks:
    """Counts 10 ms ticks of the running loop while the block runs; a blocked loop misses
    them. ``share`` is ticks counted over ticks expected (about 1.0 when never blocked)::

        async with LoopTicks() as ticks:
            await model.infer(...)
        assert ticks.share >= 0.5
    """

    period_s = 0.01

    def __init__(self) -> None:
        self.count = 0
        self.elapsed = 0.0
        self._task: asyncio.Task[None] | None = None
        self._start = 0.0

    @property
    def share(self) -> float:
        return self.count * self.period_s / self.elapsed if self.elapsed > 0 else 1.0

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            self.count += 1

    async def __aenter__(self) -> LoopTicks:
        self._start = time.perf_counter()
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.elapsed = time.perf_counter() - self._start
        if self._task is not None:
            self._task.cancel()
