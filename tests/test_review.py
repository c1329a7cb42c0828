"""The weekly review and the latency statistics, from records written into a SQLite store:
each figure checked against the value worked out by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from rejoinder.config import ReviewOptions
from rejoinder.store import CallEnd, CallStart, Store, ToolCallRecord, TurnRecord
from rejoinder.store.queries import CallFilter, list_calls, tool_statuses, turn_stats
from rejoinder.store.review import latency, percentile, review

A_START = datetime(2026, 12, 1, 10, 5, tzinfo=UTC)
B_START = datetime(2026, 12, 1, 11, 30, tzinfo=UTC)
C_START = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)  # outside the range below
RANGE = CallFilter(start=datetime(2026, 11, 30, tzinfo=UTC),
                   end=datetime(2026, 12, 2, tzinfo=UTC))


def _turn(call_id: str, seq: int, at: datetime, *, sent: float, caller: float | None,
          speculation: str | None, cached: bool | None,
          tools: list[ToolCallRecord] | None = None, stop: float | None = None) -> TurnRecord:
    return TurnRecord(
        call_id=call_id, seq=seq, turn=seq, outcome="completed",
        speech_end_at=at + timedelta(seconds=10 * seq), user_text="hello",
        agent_text="hi there", speculation=speculation, tts_cached=cached,
        stages_ms={"vad_end": 100.0 + seq, "stt_final": 150.0, "first_audio_sent": sent},
        caller_v2v_ms=caller, tool_calls=tools or [], barge_in_stop_ms=stop,
        interrupted=stop is not None)


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[Store]:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/calls.db")
    await store.migrate()
    await store.write([
        CallStart("a" * 32, "webrtc", "Rejoinder", A_START),
        _turn("a" * 32, 1, A_START, sent=550, caller=600, speculation="committed",
              cached=True),
        _turn("a" * 32, 2, A_START, sent=400, caller=None, speculation="restarted",
              cached=False, tools=[ToolCallRecord("lookup", "{}", "ok", 120.0),
                                   ToolCallRecord("book", "{}", "timeout", 5000.0)], stop=60.0),
        _turn("a" * 32, 3, A_START, sent=380, caller=420, speculation=None, cached=None,
              stop=240.0),
        CallEnd("a" * 32, A_START + timedelta(minutes=2), "ended"),
        CallStart("b" * 32, "twilio", "Support", B_START),
        _turn("b" * 32, 1, B_START, sent=700, caller=None, speculation="committed",
              cached=False, stop=80.0),
        _turn("b" * 32, 2, B_START, sent=250, caller=300, speculation="committed",
              cached=True),
        CallEnd("b" * 32, B_START + timedelta(minutes=1), "failed"),
        CallStart("c" * 32, "webrtc", "Rejoinder", C_START),
        _turn("c" * 32, 1, C_START, sent=9999, caller=None, speculation="restarted",
              cached=False, stop=5000.0),
    ])
    try:
        yield store
    finally:
        await store.close()


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([300, 400, 420, 600, 700], 95) == 680.0
    assert percentile([5], 95) == 5
    assert percentile([], 50) is None


async def test_review_figures_are_exact(store: Store) -> None:
    turns = await turn_stats(store, RANGE)
    assert len(turns) == 5  # call c is outside the range
    checks = {c["key"]: c for c in review(turns, await tool_statuses(store, RANGE),
                                          ReviewOptions())}
    # v2v: caller's where known, else first_audio_sent: 600, 400, 420, 700, 300.
    assert checks["v2v_p95"] == {
        "key": "v2v_p95", "label": "Voice-to-voice p95", "value": 680.0, "op": "<=",
        "threshold": 500.0, "unit": "ms", "status": "fail", "n": 5,
        "detail": "5 turns, 3 measured by the caller, the rest at the server "
                  "(first audio sent)"}
    assert (checks["phrase_cache"]["value"], checks["phrase_cache"]["status"]) == (0.5, "pass")
    assert checks["phrase_cache"]["n"] == 4  # the turn with tts_cached unknown is left out
    assert (checks["restart_rate"]["value"], checks["restart_rate"]["status"]) == (0.25, "fail")
    assert checks["restart_rate"]["detail"] == "1 of 4 speculative turns restarted"
    assert (checks["tool_timeouts"]["value"], checks["tool_timeouts"]["status"]) == (1.0, "fail")
    # First turns 600, 700 (p95 695); later turns 400, 420, 300 (p95 418).
    assert (checks["cold_start_tax"]["value"], checks["cold_start_tax"]["status"]) == \
        (277.0, "fail")
    # Barge-in stop times of the turns held in range: 60, 240, 80 -> p95 between 80 and
    # 240 at rank 1.9: 80 + 0.9 * 160 = 224 (call c's 5000 is outside the range).
    assert checks["barge_in_stop"] == {
        "key": "barge_in_stop", "label": "Barge-in stop time p95", "value": 224.0,
        "op": "<=", "threshold": 200.0, "unit": "ms", "status": "fail", "n": 3,
        "detail": "3 turns the caller spoke over: their speech until the agent's audio was "
                  "held, at the server (the transport's delay comes on top)"}
    assert checks["llm_prefix_reuse"]["status"] == "not_recorded"


async def test_thresholds_come_from_the_options_and_the_llm_counters_are_used(
        store: Store) -> None:
    turns = await turn_stats(store, RANGE)
    options = ReviewOptions(v2v_p95_ms=680.0, restart_max=0.25, tool_timeouts_max=1,
                            cold_start_tax_ms=277.0, phrase_cache_min=0.51,
                            barge_in_stop_ms=224.0)
    checks = {c["key"]: c for c in review(turns, ["ok", "timeout"], options,
                                          {"cached": 300, "evaluated": 100})}
    assert checks["v2v_p95"]["status"] == "pass"  # at the threshold: within budget
    assert checks["restart_rate"]["status"] == "fail"  # "below": strictly
    assert checks["tool_timeouts"]["status"] == "pass"
    assert checks["cold_start_tax"]["status"] == "pass"
    assert checks["barge_in_stop"]["status"] == "pass"  # at the threshold
    assert checks["phrase_cache"]["status"] == "fail"
    assert (checks["llm_prefix_reuse"]["value"], checks["llm_prefix_reuse"]["status"]) == \
        (0.75, "pass")
    assert "since the server started" in str(checks["llm_prefix_reuse"]["detail"])


def test_no_turns_is_no_data_not_a_pass() -> None:
    checks = {c["key"]: c["status"] for c in review([], [], ReviewOptions())}
    assert checks == {"v2v_p95": "no_data", "phrase_cache": "no_data",
                      "llm_prefix_reuse": "not_recorded", "restart_rate": "no_data",
                      "barge_in_stop": "no_data", "tool_timeouts": "pass",
                      "cold_start_tax": "no_data"}


async def test_latency_by_hour_and_overall(store: Store) -> None:
    turns = await turn_stats(store, RANGE)
    stats = latency(turns, "hour")
    assert stats["buckets"] == ["2026-12-01T10:00:00+00:00", "2026-12-01T11:00:00+00:00"]
    series = stats["series"]
    assert isinstance(series, dict)
    assert series["v2v"] == {"n": [3, 2], "p50": [420.0, 500.0], "p95": [582.0, 680.0]}
    assert series["vad_end"]["p50"] == [102.0, 101.5]
    assert stats["overall"]["first_audio_sent"] == {"n": 5, "p50": 400.0,  # type: ignore[index]
                                                    "p95": 670.0}
    assert stats["overall"]["llm_first_token"] == {"n": 0, "p50": None,  # type: ignore[index]
                                                   "p95": None}
    by_day = latency(turns, "day")
    assert by_day["buckets"] == ["2026-12-01T00:00:00+00:00"]
    # Per agent and transport: only the "Support" call over twilio.
    support = await turn_stats(store, CallFilter(RANGE.start, RANGE.end, agent="Support",
                                                 transport="twilio"))
    assert [t.call_id for t in support] == ["b" * 32] * 2


async def test_calls_list_filters_and_pages_newest_first(store: Store) -> None:
    page = await list_calls(store, CallFilter(), limit=2)
    assert page["total"] == 3
    calls = page["calls"]
    assert isinstance(calls, list)
    assert [c["call_id"][0] for c in calls] == ["b", "a"]
    assert [(c["turns"], c["errors"]) for c in calls] == [(2, 0), (3, 0)]
    page = await list_calls(store, CallFilter(), limit=2, offset=2)
    assert [c["call_id"][0] for c in page["calls"]] == ["c"]  # type: ignore[attr-defined]
    for where, expected in ((CallFilter(outcome="failed"), ["b"]),
                            (CallFilter(outcome="none"), ["c"]),
                            (CallFilter(transport="webrtc"), ["a", "c"]),
                            (RANGE, ["b", "a"])):
        got = (await list_calls(store, where))["calls"]
        assert [c["call_id"][0] for c in got] == expected, where  # type: ignore[attr-defined]
