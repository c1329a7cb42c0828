"""The booking tools as a benchmark runs them: behind a simulated remote calendar.

A real booking line talks to a calendar service over the network; the local SQLite book
answers in about a millisecond, which would hide what prefetch saves. Here every call
first waits :data:`LATENCY_S` (a cloud-typical round trip), and the book is a fresh
temporary file per server process, so a benchmark never writes into the real book and
every run starts from the same state (the same references).

    [agent] profile = "booking"
            tools = "rejoinder.agents.booking.bench"
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rejoinder.agents.booking import tools
from rejoinder.tools import Tool

LATENCY_S = 0.3  # the calendar service's round trip


def _remote(tool: Tool) -> Tool:
    inner = tool.invoke

    async def invoke(arguments: dict[str, Any]) -> Any:
        await asyncio.sleep(LATENCY_S)
        return await inner(arguments)

    return dataclasses.replace(tool, invoke=invoke)


_folder = tempfile.mkdtemp(prefix="rejoinder-booking-")
atexit.register(shutil.rmtree, _folder, True)
tools.use_database(Path(_folder) / "booking.db")
TOOLS = [_remote(t) for t in tools.TOOLS]
