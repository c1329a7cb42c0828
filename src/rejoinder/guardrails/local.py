"""The local guardrail: regular expressions and the redaction's detectors, in-process.

Rules, each a finding's ``rule`` name:

``card_number`` (clauses)
    The clause reads out a full card number, written or spoken, as
    :func:`rejoinder.core.redact.redact` finds one (13-19 digits, Luhn-valid when written
    as figures). "The card ending in 1111" passes.
``deny_pattern:<n>`` (clauses)
    The n-th (0-based) of ``deny_patterns`` matches.
``deny_topic:<name>`` (caller turns and clauses)
    A word or phrase of the topic appears (whole words, any case).
``never_promise:<thing>`` (clauses)
    The thing appears with a commitment ("I'll", "we can", "I promise", "guaranteed",
    "you will get", "definitely") that no negation ("not", "can't", "never") precedes.
``prompt_injection`` (caller turns)
    "ignore/disregard/forget your instructions", "you are now ...", "from now on you ...",
    "system prompt", "reveal your instructions", "developer mode", "jailbreak". A caller
    who says these is recorded (``injection = "flag"``), not refused, unless configured.

Each check is a handful of compiled patterns over one clause: microseconds (see
docs/benchmarks.md, "Guardrails").
"""

from __future__ import annotations

import re

from rejoinder.core.redact import CARD, might_hold_personal_data, redact
from rejoinder.guardrails.base import Finding, Guardrail
from rejoinder.guardrails.options import GuardrailOptions, parse_topic

_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\b(?:\W+\w+){0,4}?\W+"
    r"(?:instructions?|rules|prompt|guidelines|directions|programming|training)\b"
    r"|\byou(?:[’']re|\s+are)\s+now\b"
    r"|\bfrom\s+now\s+on,?\s+you\b"
    r"|\bsystem\s+(?:prompt|message|instructions?)\b"
    r"|\b(?:reveal|repeat|print|show\s+me|tell\s+me|read\s+me)\s+(?:\w+\s+){0,2}"
    r"(?:instructions|prompt)\b"
    r"|\bnew\s+instructions\b|\bdeveloper\s+mode\b|\bjailbreak|\bdan\s+mode\b",
    re.IGNORECASE)

# A commitment: the agent binds itself (or the business) to something.
_COMMIT = re.compile(
    r"\b(?:i|we)(?:[’']ll|\s+will|\s+shall|\s+can(?![’']t|not)|\s+could|\s+promise|\s+guarantee)\b"
    r"|\byou(?:[’']ll|\s+will)\s+(?:get|receive|have|be\s+given)\b"
    r"|\bguarantee[ds]?\b|\bpromise[ds]?\b|\bdefinitely\b|\bfor\s+sure\b"
    r"|\b(?:is|are)\s+(?:entitled|eligible)\b",
    re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|never|no|cannot|unable)\b|n[’']t\b", re.IGNORECASE)
_NOT_AFTER = re.compile(r"\s+(?:not|never)\b", re.IGNORECASE)


def _words(terms: list[str]) -> re.Pattern[str]:
    """Any of ``terms`` as whole words; spaces inside a term match any run of spaces."""
    alts = sorted((r"\s+".join(map(re.escape, t.split())) for t in terms), key=len,
                  reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "rule"


class LocalGuardrail(Guardrail):
    name = "local-guardrail"
    inline = True

    def __init__(self, options: GuardrailOptions | None = None) -> None:
        o = options or GuardrailOptions()
        self.options = o
        self._patterns = [(f"deny_pattern:{i}", re.compile(p, re.IGNORECASE))
                          for i, p in enumerate(o.deny_patterns)]
        self._topics = []
        for entry in o.deny_topics:
            name, terms = parse_topic(entry)
            self._topics.append((f"deny_topic:{name}", _words(terms)))
        self._promises = [(f"never_promise:{_slug(t)}", _words([t])) for t in o.never_promise]

    async def check_input(self, text: str) -> list[Finding]:
        return self.input_findings(text)

    async def check_output(self, text: str) -> list[Finding]:
        return self.output_findings(text)

    def input_findings(self, text: str) -> list[Finding]:
        found = [Finding("blocked", rule) for rule, rx in self._topics if rx.search(text)]
        injection = self.options.injection
        if injection != "off" and _INJECTION.search(text):
            found.append(Finding("blocked" if injection == "block" else "flagged",
                                 "prompt_injection"))
        return found

    def output_findings(self, text: str) -> list[Finding]:
        found: list[Finding] = []
        if self.options.card_numbers and _reads_card_number(text):
            found.append(Finding("blocked", "card_number"))
        found += [Finding("blocked", rule) for rule, rx in self._patterns if rx.search(text)]
        found += [Finding("blocked", rule) for rule, rx in self._topics if rx.search(text)]
        if self._promises and _commits(text):  # a clause is short: together is enough
            found += [Finding("blocked", rule) for rule, rx in self._promises if rx.search(text)]
        return found


def _reads_card_number(text: str) -> bool:
    if not might_hold_personal_data(text):
        return False
    # A placeholder the LLM repeated from its (redacted) prompt is no card number.
    return redact(text).count(CARD) > text.count(CARD)


def _commits(text: str) -> bool:
    """Whether ``text`` has a commitment that no negation just before or after undoes."""
    for m in _COMMIT.finditer(text):
        if not _NEGATION.search(text, max(0, m.start() - 24), m.start()) \
                and not _NOT_AFTER.match(text, m.end()):
            return True
    return False
