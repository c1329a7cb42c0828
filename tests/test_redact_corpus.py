"""The redaction corpus (``redact_corpus.py``): no leak of personal data, whole or as a
partial transcript read ahead at any word boundary, and ordinary speech left alone."""

from __future__ import annotations

import logging
from collections import Counter

from redact_corpus import (
    NEGATIVE,
    leaks,
    leaks_anything,
    positive_cases,
    prefixes,
)
from rejoinder.core.redact import read_ahead_text, redact
from rejoinder.observability.logs import RedactFilter

CASES = positive_cases()
KINDS = ("card", "phone", "ssn", "email", "iban", "account")


def test_the_corpus_holds_at_least_100_variants_of_each_kind() -> None:
    sizes = Counter(c.kind for c in CASES)
    assert all(sizes[k] >= 100 for k in KINDS), sizes
    assert len({c.text for c in CASES}) == len(CASES)
    assert positive_cases() == CASES  # generated from fixed seeds


def test_the_leak_check_finds_the_personal_data_in_the_raw_words() -> None:
    assert all(leaks(c, c.text) for c in CASES)
    assert all(leaks_anything(c, c.text) for c in CASES)


def test_no_personal_data_survives_redaction() -> None:
    leaked = [(c.text, redact(c.text)) for c in CASES if leaks(c, redact(c.text))]
    assert leaked == []


def test_no_prefix_read_ahead_leaks_anything() -> None:
    """At each word boundary of the utterance, what the LLM would be sent ahead (as it
    receives it: redacted again) holds no digit and no piece of the address."""
    leaked = [(c.text, p, sent) for c in CASES for p in prefixes(c.text)
              if leaks_anything(c, sent := redact(read_ahead_text(p)))]
    assert leaked == []


def test_ordinary_speech_passes_unchanged() -> None:
    changed = [(t, redact(t)) for t in NEGATIVE if redact(t) != t]
    assert len(NEGATIVE) >= 100 and changed == []


def test_log_lines_are_redacted_the_same_way() -> None:
    for case in CASES[::7]:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "caller said %s",
                                   (case.text,), None)
        RedactFilter().filter(record)
        assert not leaks(case, record.getMessage()), case.text
