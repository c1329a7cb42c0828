"""Tools found at a module's top level."""

from rejoinder.tools import tool


@tool(side_effects=False, timeout_s=2.0)
async def find_slots(service: str, day: str, staff: str | None = None) -> list[dict[str, str]]:
    """Free slots for a service on a day."""
    return [{"service": service, "day": day, "time": "10:00"}]


@tool
async def cancel(reference: str) -> bool:
    """Cancel a booking by its reference."""
    return reference.startswith("BK-")


NOT_A_TOOL = 3
