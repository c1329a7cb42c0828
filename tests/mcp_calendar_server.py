"""A tiny MCP server for the tests: a calendar with one read-only lookup and one booking.
Run as ``python tests/mcp_calendar_server.py`` (stdio), or with ``--http PORT`` to serve
streamable HTTP at ``http://127.0.0.1:PORT/mcp``."""

from __future__ import annotations

import sys

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

server = FastMCP("calendar")
BOOKED: list[str] = []


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def free_slots(day: str) -> list[str]:
    """Free appointment times on a day."""
    return [f"{day} 09:00", f"{day} 14:30"]


@server.tool()
def book_slot(slot: str, name: str) -> dict[str, str]:
    """Book a slot for a caller."""
    BOOKED.append(slot)
    return {"reference": f"BK-{len(BOOKED):03d}", "slot": slot}


@server.tool()
def broken(day: str) -> str:
    """Always fails."""
    raise RuntimeError("no calendar")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        server.settings.port = int(sys.argv[2])
        server.run("streamable-http")
    else:
        server.run("stdio")
