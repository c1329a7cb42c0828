"""What the agent can do besides talking: see :mod:`rejoinder.tools.base`."""

from rejoinder.tools.base import Tool, ToolCall

__all__ = ["Tool", "ToolCall"]
