"""A tool that is not async: the import itself fails, naming it."""

from rejoinder.tools import tool


@tool
def lookup_booking(reference: str) -> str:  # type: ignore[arg-type]
    """Find a booking."""
    return reference
