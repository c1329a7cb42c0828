"""The phrase cache: short phrases are synthesised once, then free until their TTL."""

from __future__ import annotations

import numpy as np
import pytest

from rejoinder.core.clock import Clock
from rejoinder.providers.phrase_cache import PhraseCache, PhraseCacheOptions
from rejoinder.testing import FakeLLM, FakeTTS, Latency, fake_stack, run_virtual
from rejoinder.testing.loopback import converse
from rejoinder.turn.clauses import split_clauses

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731


async def _say(tts, text):
    clock = Clock()
    start = clock.now()
    audio = np.concatenate([c async for c in tts.synthesize(text)])
    return clock.now() - start, audio


def test_short_phrases_are_served_from_the_cache_until_their_ttl():
    inner = FakeTTS(Latency(first_s=0.12))
    cache = PhraseCache(inner, PhraseCacheOptions(max_words=3, ttl_s=60.0))

    async def main():
        clock = Clock()
        held = [cache.holds("Sure thing.")]
        first = await _say(cache, "Sure thing.")
        again = await _say(cache, "Sure thing.")
        held.append(cache.holds(" Sure thing. "))
        long = [await _say(cache, "That is a longer sentence.") for _ in range(2)]
        held.append(cache.holds("That is a longer sentence."))
        await clock.sleep(61.0)
        held.append(cache.holds("Sure thing."))
        expired = await _say(cache, "Sure thing.")
        return first, again, long, expired, held

    first, again, long, expired, held = run_virtual(main())
    assert held == [False, True, False, False]  # what the next synthesis would find
    assert first[0] == approx(0.12) and again[0] == approx(0.0)
    assert np.array_equal(first[1], again[1])
    assert [t for t, _ in long] == [approx(0.12), approx(0.12)]  # never cached
    assert expired[0] == approx(0.12)
    assert inner.spoken == ["Sure thing.", "That is a longer sentence.",
                            "That is a longer sentence.", "Sure thing."]
    # Lookups of short phrases: miss, hit, miss (expired).
    assert cache.stats() == {"hits": 1, "misses": 2, "entries": 1, "hit_rate": 0.333}


def test_least_recently_used_phrase_goes_first():
    inner = FakeTTS()
    cache = PhraseCache(inner, PhraseCacheOptions(max_entries=2))

    async def main():
        for text in ("One.", "Two.", "One.", "Three.", "Two.", "One."):
            await _say(cache, text)

    run_virtual(main())
    # "Two." was the least recently used when "Three." came in; "One." stayed.
    # "One." was used last when "Three." came in, so "Two." went; then "Two." pushed out
    # "One." in turn.
    assert inner.spoken == ["One.", "Two.", "Three.", "Two.", "One."]
    assert cache.hits == 1


def test_primed_greeting_plays_without_tts_latency_and_does_not_count_as_a_hit():
    inner = FakeTTS(Latency(first_s=0.12))
    cache = PhraseCache(inner)
    greeting = "Hello, thanks for calling, how can I help you today?"

    async def main():
        await cache.prime([*split_clauses(greeting), ""])
        start = Clock().now()
        return start, *await converse(fake_stack(tts=cache), [("silence", 1.0)],
                                      greeting=greeting)

    start, conv, ear, events = run_virtual(main())
    # Long, but primed: the greeting is in the playout at once; the first pull takes it.
    assert ear.first_loud_after(-1) == approx(start + 0.005)
    assert inner.spoken == [greeting]
    assert cache.stats() == {"hits": 1, "misses": 0, "entries": 1, "hit_rate": 1.0}


def test_a_turn_records_whether_its_first_clause_came_from_the_cache():
    # Two turns, the same reply: the second one's first clause plays from the cache at once.
    tts = PhraseCache(FakeTTS(Latency(first_s=0.1)))
    llm = FakeLLM(["Sure thing. Anything else?"], Latency(first_s=0.1))

    async def main():
        return await converse(fake_stack(llm=llm, tts=tts),
                              [("silence", 0.5), ("speech", 1.0), ("silence", 3.0),
                               ("speech", 1.0)])

    conv, ear, events = run_virtual(main())
    first, second = conv.traces
    assert (first["tts_cached"], second["tts_cached"]) == (False, True)
    waits = [t["ms_after_speech_end"]["tts_first_audio"] - t["ms_after_speech_end"]["first_clause"]
             for t in (first, second)]
    assert waits == [approx(100.0), approx(0.0)]
