"""What the agent can do besides talking: see :mod:`rejoinder.tools.base`."""

from rejoinder.tools.base import Tool, ToolCall
from rejoinder.tools.box import Toolbox, load_tools
from rejoinder.tools.python import function_tool, load_module, tool

__all__ = ["Tool", "ToolCall", "Toolbox", "function_tool", "load_module", "load_tools", "tool"]
