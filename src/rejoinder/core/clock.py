"""Time for the turn logic comes from here, never from ``time`` directly.

The clock reads the running event loop's time. In production that is the
monotonic clock; tests run the same code on a loop whose time is virtual
(:func:`rejoinder.testing.virtual_time.run`), so timing assertions are exact
and instant. ``wall()`` is only for stamping records that leave the process.
"""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Monotonic seconds from the running loop, and sleeps on the same timeline."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def wall(self) -> float:
        """Unix time, for records read outside this process."""
        return time.time()
