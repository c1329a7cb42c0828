"""A fake guardrail with a fixed latency on the injected clock, like a moderation service."""

from __future__ import annotations

from collections.abc import Sequence

from rejoinder.core.clock import Clock
from rejoinder.guardrails.base import Finding, Guardrail


class FakeModeration(Guardrail):
    """Answers each check after ``latency_s``; a text containing one of ``block`` (any
    case) is ``moderation:fake``. Not inline, like a remote service. Records every
    checked text in ``checked`` (inputs and outputs alike)."""

    name = "fake-moderation"
    inline = False

    def __init__(self, latency_s: float = 0.15, block: Sequence[str] = (),
                 clock: Clock | None = None) -> None:
        self.latency_s = latency_s
        self.block = [b.lower() for b in block]
        self.clock = clock or Clock()
        self.checked: list[str] = []

    async def check_input(self, text: str) -> list[Finding]:
        return [Finding("flagged", f.rule) for f in await self.check_output(text)]

    async def check_output(self, text: str) -> list[Finding]:
        self.checked.append(text)
        await self.clock.sleep(self.latency_s)
        if any(b in text.lower() for b in self.block):
            return [Finding("blocked", "moderation:fake")]
        return []
