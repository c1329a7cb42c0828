"""Inline guardrails: checks on each caller turn before the LLM and on each clause of the
agent's reply before it is synthesised (see :mod:`rejoinder.guardrails.base`)."""

from __future__ import annotations

from dataclasses import dataclass

from rejoinder.guardrails.base import SAFE_LINE, Finding, Guardrail
from rejoinder.guardrails.local import LocalGuardrail
from rejoinder.guardrails.options import GuardrailOptions
from rejoinder.guardrails.remote import ModerationGuardrail

__all__ = ["SAFE_LINE", "Finding", "Guardrail", "GuardrailOptions", "Guardrails",
           "LocalGuardrail", "ModerationGuardrail", "build_guardrails"]


@dataclass(frozen=True)
class Guardrails:
    """What a server's replies are checked by (``Stack.guardrails``)."""

    checks: tuple[Guardrail, ...]
    safe_line: str = SAFE_LINE
    name: str = "guardrails"

    async def close(self) -> None:
        for guard in self.checks:
            await guard.close()


def build_guardrails(options: GuardrailOptions) -> Guardrails | None:
    """The guardrails ``[guardrails]`` asks for: the local one, then the moderation
    service if ``moderation_url`` is set; none when ``enabled`` is off."""
    if not options.enabled:
        return None
    guards: list[Guardrail] = [LocalGuardrail(options)]
    if options.moderation_url:
        guards.append(ModerationGuardrail(
            options.moderation_url, model=options.moderation_model,
            api_key=options.moderation_api_key, timeout_s=options.moderation_timeout_s,
            fail=options.moderation_fail))
    return Guardrails(tuple(guards), options.safe_line)
