"""Graceful drain, the same for a single-process server and a cluster's worker.

SIGTERM (a service manager stopping the server, a deploy) sets the server draining: new
calls get 503 ``draining`` and ``/api/health`` says ``"status": "draining"``; live calls
go on for ``server.drain_s``; then the agent says ``server.drain_goodbye`` in each call
still up (its reply in progress cut as at a barge-in) and the call ends.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from rejoinder.core.clock import Clock

if TYPE_CHECKING:
    from rejoinder.server.app import Server
    from rejoinder.server.call import Call

log = logging.getLogger(__name__)

GOODBYE_MAX_S = 10.0  # the goodbye line is short; a stuck one does not hold the exit


async def drain(server: Server, deadline_s: float, goodbye: str,
                clock: Clock | None = None) -> None:
    """Stop admitting, let live calls end on their own for ``deadline_s``, then say
    ``goodbye`` in each and end it."""
    clock = clock or Clock()
    server.draining = True
    if server.calls:
        log.info("draining: %d live calls, up to %.0f s", len(server.calls), deadline_s)
    end = clock.now() + deadline_s
    while server.calls and clock.now() < end:
        await clock.sleep(min(0.2, end - clock.now()))
    calls = list(server.calls.values())
    if calls:
        log.info("drain deadline: ending %d calls with a goodbye", len(calls))
        await asyncio.gather(*(say_goodbye(c, goodbye) for c in calls))


async def say_goodbye(call: Call, line: str) -> None:
    """The agent says ``line`` (for at most ``GOODBYE_MAX_S``), then the call ends."""
    try:
        if line:
            try:
                async with asyncio.timeout(GOODBYE_MAX_S):
                    await call.conversation.say_goodbye(line)
            except TimeoutError:
                log.warning("the goodbye was not played within %.0f s", GOODBYE_MAX_S,
                            extra={"call_id": call.id})
    finally:
        await call.close()
