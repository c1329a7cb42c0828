"""A TOOLS list wins over what else is at the top level."""

from rejoinder.tools import tool


@tool(side_effects=False)
async def ping() -> str:
    """Answers pong."""
    return "pong"


@tool
async def hidden() -> str:
    """Not listed."""
    return ""


TOOLS = [ping]
