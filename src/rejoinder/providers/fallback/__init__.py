"""Chains of provider backends: a backend that fails is replaced by the next within the turn.

:class:`FallbackSTT`, :class:`FallbackLLM` and :class:`FallbackTTS` implement the
provider contracts by wrapping an ordered list of :class:`Backend` s
(``[[stt.backends]]``, ``[[llm.backends]]``, ``[[tts.backends]]``). A backend that
raises, drops its stream, or misses its first-item or idle deadline (its own limits,
enforced by its own base class) is replaced by the next one in the same request; one
whose :class:`~rejoinder.providers.breaker.CircuitBreaker` is open is skipped. The
chain itself sets no time limit: the backends' limits apply one after the other.

What the caller hears when a backend fails midway:

- **LLM**: text is relayed only up to the last clause end (a clause as the reply's
  splitter cuts them, at every comma or sentence end), so a reply that breaks leaves no
  half clause behind: the words after the last clause end are dropped, never spoken.
  The next backend is asked with the clauses already relayed as an assistant prefix
  (the last message) and continues from there; providers that restart the reply instead
  of continuing it are handled too: leading clauses equal to ones already relayed are
  dropped, so no clause is said twice. (Restarting on the fallback and skipping as many
  clauses would join two different replies.) Tool calls pass through untouched; a
  stream that breaks after a tool call ends there (the reply runs the calls it got and
  asks again, through the chain), so no call runs twice.
- **TTS**: a clause is synthesised by one backend; one that dies midway is replaced and
  the *whole clause* is said again by the next, resampled to the chain's rate (a
  listener hears the clause restart, as when a person stumbles, and loses no words;
  skipping it would lose what it said).
- **STT**: the first backend's session hears the utterance as it comes (its partial
  words are the chain's: a streaming remote STT's, the embedded Whisper's); the audio
  is kept too, and a backend that fails (a streaming one whose socket dropped) is
  replaced by the next with the same audio (its whole-utterance ``transcribe``).

Every fallback and timeout is logged (the call id comes with the log record) and
counted in :class:`~rejoinder.providers.breaker.FallbackStats`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from rejoinder.providers.breaker import FallbackStats
from rejoinder.providers.fallback.chain import ROUTES, UNLIMITED_S, Backend
from rejoinder.providers.fallback.llm import FallbackLLM
from rejoinder.providers.fallback.stt import FallbackSTT
from rejoinder.providers.fallback.tts import FallbackTTS

__all__ = ["ROUTES", "UNLIMITED_S", "Backend", "FallbackLLM", "FallbackSTT", "FallbackTTS",
           "chain_counts"]


def chain_counts(*providers: object) -> Callable[[], Counter[tuple[str, str, str, str]]] | None:
    """What the chains among ``providers`` (a phrase cache looked through) have counted,
    read when called (at each scrape); None when none is a chain."""
    found: list[FallbackStats] = []
    for p in providers:
        p = getattr(p, "inner", p)
        if isinstance(p, FallbackSTT | FallbackLLM | FallbackTTS) \
                and all(p.stats is not s for s in found):
            found.append(p.stats)
    if not found:
        return None

    def counts() -> Counter[tuple[str, str, str, str]]:
        total: Counter[tuple[str, str, str, str]] = Counter()
        for s in found:
            total.update(s.counts)
        return total

    return counts
