"""A provider killed -9 in the middle of a live call's reply costs no call: a real server on
two simulated clouds (the primary and the fallback of its LLM and TTS chains), a real
WebRTC caller speaking LibriVox utterances; the primary dies while its LLM streams a reply
and its TTS says it, then comes back (rejoinder.bench.fallback_call, which also measures
the time the kill adds to that turn)."""

from __future__ import annotations

import pytest

from rejoinder.bench.fallback_call import KILL_TURN, REPLY, UTTERANCES, run_once

pytestmark = pytest.mark.slow  # the embedded VAD, three processes, a 45 s call


def _count(counts: dict[str, float], kind: str, backend: str, reason: str = "") -> float:
    return sum(v for k, v in counts.items()
               if k.startswith("rejoinder_provider_fallbacks_total{")
               and f'kind="{kind}"' in k and f'backend="{backend}"' in k
               and (not reason or f'reason="{reason}"' in k))


async def test_a_provider_killed_mid_reply_costs_no_turn(tmp_path):
    o = await run_once(tmp_path)
    assert o.killed_at is not None
    hit_first_clause = o.clauses[KILL_TURN][0][0]
    assert hit_first_clause <= o.killed_at < o.traces[KILL_TURN][0]  # in the reply
    # Every turn answered, the one hit included, each reply whole and no clause twice.
    assert not o.errors
    assert [o.traces[t][1]["outcome"] for t in range(1, UTTERANCES + 1)] == \
        ["completed"] * UTTERANCES
    assert all(o.text(t) == REPLY for t in range(1, UTTERANCES + 1))
    # The store kept every turn of the call, and its end.
    stored = o.record["turns"]
    assert [(t["turn"], t["outcome"]) for t in stored] == \
        [(t, "completed") for t in range(1, UTTERANCES + 1)]
    assert all(t["agent_text"] == REPLY for t in stored)
    assert o.record["ended_at"]
    # The counters show the fallbacks: the LLM stream that broke (once: the next turn's
    # reply came from the restarted primary again), the TTS clause cut midway or refused;
    # the fallback itself never failed.
    assert _count(o.counts, "llm", "primary") == 1
    assert _count(o.counts, "llm", "primary", "failed") == 1
    assert _count(o.counts, "tts", "primary") >= 1
    assert _count(o.counts, "llm", "fallback") == _count(o.counts, "tts", "fallback") == 0
    print(f"time added to turn {KILL_TURN} by the kill: {o.added_s() * 1000:+.0f} ms")
