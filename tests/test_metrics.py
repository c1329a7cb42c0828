"""GET /metrics after scripted calls on the fake providers (virtual time): exact values,
read back with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from rejoinder.config import Config
from rejoinder.observability.measured import MeasuredTurns
from rejoinder.observability.metrics import Metrics
from rejoinder.providers.phrase_cache import PhraseCache
from rejoinder.server.app import Server
from rejoinder.store import Recorder, Store
from rejoinder.testing import (
    FakeLLM,
    FakeSTT,
    FakeTTS,
    FakeVAD,
    Latency,
    fake_stack,
    run_virtual,
)
from rejoinder.testing.loopback import converse

TWO_TURNS = [("silence", 0.5), ("speech", 1.0), ("silence", 3.0), ("speech", 1.0)]


class CachingLLM(FakeLLM):
    """A fake LLM that reports prefix-cache reuse, as the embedded one does."""

    def prompt_cache_stats(self) -> dict[str, int]:
        return {"evaluated": 120, "cached": 880}


def _calls(tts: PhraseCache, llm: FakeLLM):
    """Two calls: two turns answered with the same short reply (the second from the phrase
    cache), then one whose LLM never answers (llm_timeout)."""
    stt = FakeSTT(["what time is it", "and now"], Latency(first_s=0.1))
    good = fake_stack(stt=stt, llm=llm, tts=tts)
    a = run_virtual(converse(good, TWO_TURNS))
    bad_llm = FakeLLM(["a"], Latency(fail="timeout"))
    bad_llm.first_item_timeout_s = 3.0
    bad = fake_stack(stt=FakeSTT(["hello"], Latency(first_s=0.1)), llm=bad_llm, tts=tts)
    b = run_virtual(converse(bad, [("silence", 0.5), ("speech", 1.0)]))
    return a, b


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_after_scripted_calls_are_exact(tmp_path) -> None:
    tts = PhraseCache(FakeTTS(Latency(first_s=0.05)))
    llm = CachingLLM(["Sure, I can help.", "Sure, I can help."],
                     Latency(first_s=0.2, per_item_s=0.05))
    (conv_a, _, events_a), (conv_b, _, events_b) = _calls(tts, llm)
    # The scripted turns, as the trace records say (speculation at the 100 ms pause):
    assert [e["ms_after_speech_end"] for e in events_a + events_b if e["type"] == "trace"] == [
        {"speech_end": 0.0, "vad_end": 100.0, "turn_confirmed": 300.0, "stt_final": 200.0,
         "llm_first_token": 400.0, "first_clause": 550.0, "tts_first_audio": 600.0,
         "first_audio_sent": 605.0},
        {"speech_end": 0.0, "vad_end": 100.0, "turn_confirmed": 300.0, "stt_final": 200.0,
         "llm_first_token": 400.0, "first_clause": 550.0, "tts_first_audio": 550.0,
         "first_audio_sent": 565.0},  # the phrase cache: no TTS wait
        {"speech_end": 0.0, "vad_end": 100.0, "turn_confirmed": 300.0, "stt_final": 200.0}]

    store = Store(f"sqlite+aiosqlite:///{tmp_path}/calls.db")
    recorder = Recorder(store)  # not started: what is queued stays queued
    server = Server(Config(), fake_stack(tts=tts, llm=llm), recorder)
    for call_id, conv, events in (("a", conv_a, events_a), ("b", conv_b, events_b)):
        observers = server.observability.attach(call_id, conv.stats)
        gate = MeasuredTurns()
        record = recorder.call(call_id, transport="webrtc", agent="Rejoinder")
        for event in events:
            for observe in (gate.on_event, *observers, record.on_event):
                observe(event)
        if call_id == "a":
            measured = gate.accept('{"type": "measured", "turn": 2, "v2v_ms": 612.5}')
            assert measured is not None
            for observe in observers:
                observe(measured)
        server.observability.detach(call_id)  # the call ended: its counts stay
    server.calls["live"] = object()  # type: ignore[assignment]

    async def scrape() -> str:
        client = TestClient(TestServer(server.app(), host="127.0.0.1"))
        await client.start_server()
        try:
            resp = await client.get("/metrics")
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            return await resp.text()
        finally:
            server.calls.clear()
            await client.close()
            await store.close()

    got = _samples(asyncio.run(scrape()))

    def value(name: str, **labels: str) -> float:
        return got[(name, frozenset(labels.items()))]

    stage = "rejoinder_turn_stage_ms"
    # Three turns reached the transcript; two the LLM and the TTS.
    for name, count, total in (("vad_end", 3, 300.0), ("turn_confirmed", 3, 900.0),
                               ("stt_final", 3, 600.0), ("llm_first_token", 2, 800.0),
                               ("first_clause", 2, 1100.0), ("tts_first_audio", 2, 1150.0),
                               ("first_audio_sent", 2, 1170.0)):
        assert (value(f"{stage}_count", stage=name), value(f"{stage}_sum", stage=name)) \
            == (count, total), name
    assert value(f"{stage}_bucket", stage="first_audio_sent", le="500.0") == 0
    assert value(f"{stage}_bucket", stage="first_audio_sent", le="600.0") == 1  # 565
    assert value(f"{stage}_bucket", stage="first_audio_sent", le="700.0") == 2  # 605
    assert value(f"{stage}_bucket", stage="first_audio_sent", le="+Inf") == 2
    assert value("rejoinder_end_of_turn_delay_ms_count") == 3
    assert value("rejoinder_end_of_turn_delay_ms_sum") == 900.0
    assert value("rejoinder_end_of_turn_delay_ms_bucket", le="250.0") == 0
    assert value("rejoinder_end_of_turn_delay_ms_bucket", le="300.0") == 3
    assert value("rejoinder_caller_v2v_ms_count") == 1
    assert value("rejoinder_caller_v2v_ms_sum") == 612.5
    assert value("rejoinder_caller_v2v_ms_bucket", le="600.0") == 0
    assert value("rejoinder_caller_v2v_ms_bucket", le="700.0") == 1

    assert value("rejoinder_turns_total", outcome="completed") == 2
    assert value("rejoinder_turns_total", outcome="failed") == 1
    assert value("rejoinder_turns_total", outcome="interrupted") == 0
    assert value("rejoinder_provider_errors_total", provider="llm", code="llm_timeout") == 1
    assert value("rejoinder_speculative_starts_total") == 3
    assert value("rejoinder_speculative_commits_total") == 3
    for name in ("speculative_wasted", "speculative_restarts", "speculative_restarts_kept",
                 "interruptions",
                 "false_interruptions", "backchannels", "take_backs", "fillers"):
        assert value(f"rejoinder_{name}_total") == 0, name
    assert value("rejoinder_phrase_cache_hits_total") == 1
    assert value("rejoinder_phrase_cache_misses_total") == 1
    assert value("rejoinder_llm_prompt_tokens_total", source="cached") == 880
    assert value("rejoinder_llm_prompt_tokens_total", source="evaluated") == 120
    assert value("rejoinder_active_calls") == 1
    # Recorded but not written yet: two calls' starts and their three turns.
    assert value("rejoinder_store_queue_depth") == 5
    assert value("rejoinder_store_dropped_total") == 0
    # Defined for tools, observed by none yet.
    assert not any(name.startswith("rejoinder_tool_duration_ms") for name, _ in got)


def test_a_calls_counters_are_read_live_and_kept_once_it_ends() -> None:
    metrics = Metrics()
    stats: Counter[str] = Counter()
    call = metrics.call(stats)

    def counted(name: str) -> float:
        return _samples(metrics.exposition().decode())[(f"rejoinder_{name}_total",
                                                        frozenset())]

    stats["interruptions"] += 2
    stats["wasted"] += 1
    assert (counted("interruptions"), counted("speculative_wasted")) == (2, 1)
    call.close()
    call.close()  # idempotent: not counted twice
    stats["interruptions"] += 5  # after the end: no longer read
    other = metrics.call(Counter({"interruptions": 1, "fillers": 3}))
    assert (counted("interruptions"), counted("fillers")) == (3, 3)
    other.close()
    assert (counted("interruptions"), counted("fillers")) == (3, 3)


def test_error_labels_stay_bounded_and_each_server_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    call = first.call()
    call.on_event({"type": "error", "turn": 1, "code": "stt_unavailable", "message": "x"})
    call.on_event({"type": "error", "turn": 2, "code": "Traceback: secret at /x", "message": ""})
    call.on_event({"type": "error", "turn": 3, "code": "internal", "message": ""})
    call.on_event({"type": "trace", "turn": 4, "outcome": "???", "ms_after_speech_end": {}})
    got = _samples(first.exposition().decode())
    errors = {dict(labels)["code"]: (dict(labels)["provider"], v) for (name, labels), v
              in got.items() if name == "rejoinder_provider_errors_total"}
    assert errors == {"stt_unavailable": ("stt", 1), "error": ("server", 1),
                      "internal": ("server", 1)}
    assert got[("rejoinder_turns_total", frozenset({("outcome", "other")}))] == 1
    assert not any(name == "rejoinder_provider_errors_total"
                   for name, _ in _samples(second.exposition().decode()))


def _barge_in(onset_s: float) -> list[dict[str, object]]:
    """A reply the caller speaks over from 2.5 s (a backchannel: the agent resumes), with a
    VAD that calls speech ``onset_s`` after the sound begins."""
    stt = FakeSTT(["tell me a story", "Mm-hmm."], Latency(first_s=0.1))
    llm = FakeLLM(["Once upon a time there was a fox."], Latency(first_s=0.2, per_item_s=0.02))
    stack = fake_stack(vad=FakeVAD(onset_s=onset_s), stt=stt, llm=llm,
                       tts=FakeTTS(Latency(first_s=0.05)))
    _, _, events = run_virtual(converse(stack, [("silence", 0.5), ("speech", 1.0),
                                                ("silence", 1.0), ("speech", 0.4)]))
    return events


def test_barge_in_stop_time_is_a_histogram_of_the_hold_events() -> None:
    metrics = Metrics()
    call = metrics.call()
    # Held after 60 ms of speech, then after 120 ms (a VAD 100 ms late, its verdict with
    # the next frame).
    for onset_s in (0.0, 0.1):
        for event in _barge_in(onset_s):
            call.on_event(event)
    for junk in ({"type": "hold", "turn": 1}, {"type": "hold", "turn": 1, "speech_ms": "9"},
                 {"type": "hold", "turn": 1, "speech_ms": float("nan")},
                 {"type": "hold", "turn": 1, "speech_ms": -5.0}):
        call.on_event(junk)
    got = _samples(metrics.exposition().decode())

    def value(name: str, **labels: str) -> float:
        return got[(f"rejoinder_barge_in_stop_ms_{name}", frozenset(labels.items()))]

    assert (value("count"), value("sum")) == (2, 180.0)
    assert value("bucket", le="40.0") == 0
    assert value("bucket", le="60.0") == 1
    assert value("bucket", le="100.0") == 1
    assert value("bucket", le="120.0") == 2
    assert value("bucket", le="+Inf") == 2
