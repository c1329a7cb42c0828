"""``[guardrails]``: the rules of the local guardrail and the remote moderation service."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from rejoinder.core.bounds import check_numbers
from rejoinder.core.errors import ConfigError
from rejoinder.guardrails.base import SAFE_LINE

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


@dataclass(frozen=True)
class GuardrailOptions:
    # On by default: it costs microseconds a clause, and its default rules (no full card
    # number read back, prompt-injection attempts flagged) never touch an ordinary reply.
    enabled: bool = True
    safe_line: str = SAFE_LINE  # said in place of a blocked clause; the reply ends there
    # Regular expressions (case-insensitive) the agent must never say.
    deny_patterns: list[str] = field(default_factory=list)
    # Topics neither side may take up: "name: word|other word|...". A caller turn on one
    # is answered with the safe line (no LLM request); a clause on one is blocked.
    deny_topics: list[str] = field(default_factory=list)
    # Things the agent must never promise ("refund", "a discount"): a clause that names
    # one with a commitment ("I'll", "we can", "guaranteed", "you will get") is blocked;
    # a negated one ("I can't promise a refund") is not.
    never_promise: list[str] = field(default_factory=list)
    card_numbers: bool = True  # block a clause that reads out a full card number
    # Caller turns that try to steer the agent ("ignore your instructions", "you are now",
    # "system prompt"): "flag" (recorded), "block" (answered with the safe line) or "off".
    injection: str = "flag"
    # An OpenAI-compatible moderation service, e.g. "https://api.openai.com/v1" (POST
    # {moderation_url}/moderations). Empty: none. It checks every clause (a flagged one is
    # blocked) and flags caller turns; it runs alongside TTS, see README "Guardrails".
    moderation_url: str = ""
    moderation_model: str = "omni-moderation-latest"
    moderation_api_key: str = ""  # or REJOINDER_GUARDRAILS__MODERATION_API_KEY
    moderation_timeout_s: float = 1.0
    # When the service fails or is late: "open" speaks the clause (and flags the turn
    # "moderation_unavailable"), "closed" blocks it. Open by default: a caller left in
    # silence because a moderation service is down is the worse failure for most agents.
    moderation_fail: str = "open"

    def __post_init__(self) -> None:
        check_numbers(self, "guardrails", {"moderation_timeout_s": (0.01, 30.0)})
        if not self.safe_line.strip():
            raise ConfigError("guardrails.safe_line", "must not be empty")
        if self.injection not in ("flag", "block", "off"):
            raise ConfigError("guardrails.injection",
                              f"{self.injection!r} is not 'flag', 'block' or 'off'")
        if self.moderation_fail not in ("open", "closed"):
            raise ConfigError("guardrails.moderation_fail",
                              f"{self.moderation_fail!r} is not 'open' or 'closed'")
        if self.moderation_url and not self.moderation_url.startswith(("http://", "https://")):
            raise ConfigError("guardrails.moderation_url", "must be an http(s):// URL")
        for i, pattern in enumerate(self.deny_patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"guardrails.deny_patterns[{i}]",
                                  f"is not a regular expression: {exc}") from None
        for i, entry in enumerate(self.deny_topics):
            try:
                parse_topic(entry)
            except ValueError as exc:
                raise ConfigError(f"guardrails.deny_topics[{i}]", str(exc)) from None
        for i, thing in enumerate(self.never_promise):
            if not thing.strip():
                raise ConfigError(f"guardrails.never_promise[{i}]", "must not be empty")

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return f"GuardrailOptions(enabled={self.enabled!r}, " \
               f"moderation_url={self.moderation_url!r}, " \
               f"moderation_api_key={'***' if self.moderation_api_key else ''!r})"


def parse_topic(entry: str) -> tuple[str, list[str]]:
    """``"politics: election|vote|senator"`` -> ``("politics", ["election", ...])``."""
    name, sep, words = entry.partition(":")
    name = name.strip().lower()
    if not sep or not _NAME.fullmatch(name):
        raise ValueError(f"{entry!r} is not 'name: word|word|...' (name: a-z, 0-9, _)")
    terms = [w.strip() for w in words.split("|") if w.strip()]
    if not terms:
        raise ValueError(f"topic {name!r} has no words")
    return name, terms
