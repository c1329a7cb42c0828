"""Built-in agent profiles: a system prompt, a greeting and a tools module under one name.

``[agent] profile = "booking"`` (or ``rejoinder serve --agent booking``) fills in
``system_prompt``, ``greeting`` and ``tools`` where the configuration leaves them at their
defaults; a value set explicitly wins, so a profile can be adapted without copying it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    system_prompt: str
    greeting: str
    tools: str  # the module holding the tools


PROFILES = {"booking": "rejoinder.agents.booking"}


def profile(name: str) -> Profile:
    """The built-in profile ``name``; ``KeyError`` if there is none."""
    mod = importlib.import_module(PROFILES[name])
    return Profile(name=name, system_prompt=mod.SYSTEM_PROMPT, greeting=mod.GREETING,
                   tools=mod.TOOLS_MODULE)
