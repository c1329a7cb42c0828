"""The guardrail contract: what the agent must not say, and caller turns worth a flag.

A :class:`Guardrail` checks each caller turn before the LLM reads it
(:meth:`Guardrail.check_input`) and each clause of a reply before it is synthesised
(:meth:`Guardrail.check_output`). A check returns :class:`Finding` items, none when the
text passes; a finding names its rule (``card_number``, ``deny_topic:politics``,
``prompt_injection``, ``moderation:violence``), never the text that matched: findings go
to the caller's events, the metrics and the call record.

``blocked`` means the clause is not spoken: the reply says the safe line instead and
stops there. ``flagged`` means it is spoken (or answered) and the turn's record says why
it was noticed.

An ``inline`` guardrail (CPU only, well under a millisecond a check) is awaited where it
stands: before the LLM request for a caller turn. One that is not (a remote moderation
service) checks a caller turn alongside the LLM, so its findings there can only flag, and
checks each clause from the moment the LLM finished it, while the clause before is still
being synthesised and played: only the first clause of a reply can wait for it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

Action = Literal["blocked", "flagged"]

#: What the agent says in place of a blocked clause (``[guardrails] safe_line``).
SAFE_LINE = "I'm sorry, I can't help with that."


@dataclass(frozen=True)
class Finding:
    """One rule a text broke. ``rule`` is a stable name without personal data."""

    action: Action
    rule: str


class Guardrail(ABC):
    """Checks caller turns and outgoing clauses. Implementations never raise for a text
    they cannot judge (a moderation service down): they log it and return a finding or
    nothing, as their options say."""

    name = "guardrail"
    #: Awaited on the turn's critical path (see the module docstring).
    inline = True

    @abstractmethod
    async def check_input(self, text: str) -> list[Finding]:
        """Findings on the caller's words (the transcript, before redaction)."""

    @abstractmethod
    async def check_output(self, text: str) -> list[Finding]:
        """Findings on one clause the agent is about to say."""

    async def close(self) -> None:
        """Release what the guardrail holds (an HTTP session). Idempotent."""
        return None
