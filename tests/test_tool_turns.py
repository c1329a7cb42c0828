"""The reply's tool loop on virtual time with fakes: ordering, fillers, prefetch, side
effects never speculative, timeouts and failures, barge-in during a tool, concurrency."""

from __future__ import annotations

import asyncio
import json

import pytest

from rejoinder.core.audio import SAMPLE_RATE
from rejoinder.core.clock import Clock
from rejoinder.providers.base import ChatMessage
from rejoinder.testing import (
    FakeLLM,
    FakeSTT,
    FakeTTS,
    FakeTurnModel,
    Latency,
    fake_stack,
    run_virtual,
)
from rejoinder.testing.loopback import converse
from rejoinder.tools import Tool, Toolbox, ToolCall, tool
from rejoinder.turn.options import TurnOptions

FILLER, APOLOGY = "Let me check that.", "Sorry, I couldn't do that just now."


class Log:
    """What the tools saw: (clock time started, name, arguments), and when each ended."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.started: list[tuple[float, str, dict[str, object]]] = []
        self.ended: list[tuple[float, str]] = []


def slots(log: Log, latency_s: float, *, fail: bool = False, timeout_s: float = 5.0) -> Tool:
    @tool(side_effects=False, timeout_s=timeout_s)
    async def find_slots(day: str) -> list[str]:
        """Free slots on a day."""
        log.started.append((log.clock.now(), "find_slots", {"day": day}))
        await log.clock.sleep(latency_s)
        if fail:
            raise RuntimeError("calendar down for Jane Doe")  # never in logs or events
        log.ended.append((log.clock.now(), "find_slots"))
        return [f"{day} 10:00"]

    return find_slots


def booking(log: Log, latency_s: float) -> Tool:
    @tool(side_effects=True, timeout_s=10.0)
    async def book(day: str) -> dict[str, str]:
        """Book the slot."""
        log.started.append((log.clock.now(), "book", {"day": day}))
        await log.clock.sleep(latency_s)
        log.ended.append((log.clock.now(), "book"))
        return {"reference": "BK-1"}

    return book


def script(first: list[str | ToolCall], after: str = "Tuesday at ten is free."):
    """The LLM: ``first`` for the caller's words, ``after`` once a tool result is in."""
    return lambda messages: after if messages[-1].role == "tool" else first


def call(name: str, **args: object) -> ToolCall:
    return ToolCall(f"c-{name}-{len(args)}", name, json.dumps(args))


def box(*tools: Tool, filler_after_s: float = 1.0) -> Toolbox:
    return Toolbox.of(tools, filler_after_s=filler_after_s)


def tool_events(events):
    return [(e["name"], e["status"], e.get("ms"), e["prefetched"]) for e in events
            if e["type"] == "tool"]


@pytest.mark.parametrize(("latency_s", "filler"), [(1.5, True), (0.5, False)])
def test_tool_turn_speaks_the_preamble_at_once_a_filler_only_past_its_threshold(latency_s,
                                                                                filler):
    log = Log()
    llm = FakeLLM(script(["Let me look.", call("find_slots", day="tuesday")]),
                  Latency(first_s=0.1, per_item_s=0.01))
    tts = FakeTTS()
    stack = fake_stack(stt=FakeSTT(["any slots on tuesday"]), llm=llm, tts=tts)
    stack.tools = box(slots(log, latency_s))

    conv, ear, events = run_virtual(converse(stack, [("silence", 0.5), ("speech", 1.0)],
                                             options=TurnOptions(speculate=False)))
    expected = ["Let me look.", *([FILLER] if filler else []), "Tuesday at ten is free."]
    assert tts.spoken == expected
    assert [e["text"] for e in events if e["type"] == "agent"] == expected
    assert conv.stats["tool_fillers"] == int(filler)
    (start, _, args), = log.started
    assert args == {"day": "tuesday"}
    # The preamble was heard before the tool's result was in.
    assert ear.first_loud_after(0) < start + latency_s
    assert tool_events(events) == [("find_slots", "started", None, False),
                                   ("find_slots", "ok", pytest.approx(latency_s * 1000), False)]
    # The second request carries the call and its result, in the chat-completions shape.
    second = llm.requests[1]
    assert second[-2].tool_calls == (call("find_slots", day="tuesday"),)
    assert second[-1] == ChatMessage("tool", '["tuesday 10:00"]',
                                     tool_call_id="c-find_slots-1")
    assert llm.offered[0] == ("find_slots",)
    # The history keeps the exchange, then the words said after it.
    assert [m.role for m in conv.history] == ["user", "assistant", "tool", "assistant"]
    assert conv.history[-1].content == "Tuesday at ten is free."
    (trace,) = conv.traces
    assert trace["outcome"] == "completed"


def _by_length(short, long):
    return lambda audio: long if len(audio) > 2.0 * SAMPLE_RATE else short


def _mid_sentence_model():
    """The end-of-turn model: "not yet" at the first pause, sure at the second."""
    return FakeTurnModel(_by_length(0.2, 0.95), Latency(first_s=0.05))


PAUSE_AND_GO_ON = [("silence", 0.5), ("speech", 1.0), ("silence", 0.5), ("speech", 1.0)]


@pytest.mark.parametrize("same_words", [True, False])
def test_prefetch_from_the_speculation_is_used_when_asked_again_or_wasted(same_words):
    # "on tuesday" (1 s), a 500 ms pause: the speculative reply asks for find_slots at once
    # (read-only: it runs); the caller goes on (1 s) and the confirmed reply asks again.
    log = Log()
    later = "on tuesday please" if same_words else "no wednesday"
    stt = FakeSTT(_by_length("on tuesday", later), Latency(first_s=0.1))

    def reply(messages):
        if messages[-1].role == "tool":
            return "Found one."
        day = "wednesday" if "wednesday" in messages[-1].content else "tuesday"
        return [call("find_slots", day=day)]

    stack = fake_stack(stt=stt, llm=FakeLLM(reply, Latency(first_s=0.1)), tts=FakeTTS(),
                       turn=_mid_sentence_model())
    stack.tools = box(slots(log, 0.3))
    conv, _, events = run_virtual(converse(stack, PAUSE_AND_GO_ON,
                                           options=TurnOptions(reask_s=0.0)))
    assert conv.stats["wasted"] == 1  # the speculation the caller talked over
    if same_words:
        assert [a for _, _, a in log.started] == [{"day": "tuesday"}]  # once, ahead of time
        assert conv.stats["prefetch_hits"] == 1
        assert conv.stats["prefetch_wasted"] == 0
        assert tool_events(events) == [("find_slots", "ok", pytest.approx(300.0), True)]
    else:
        assert [a for _, _, a in log.started] == [{"day": "tuesday"}, {"day": "wednesday"}]
        assert conv.stats["prefetch_hits"] == 0
        assert conv.stats["prefetch_misses"] == 1
        assert conv.stats["prefetch_wasted"] == 1
        assert [e[:2] for e in tool_events(events)] == [("find_slots", "started"),
                                                        ("find_slots", "ok")]


def test_a_side_effecting_tool_never_runs_on_speculation():
    log = Log()
    stt = FakeSTT(_by_length("book tuesday", "book tuesday at ten"), Latency(first_s=0.1))
    llm = FakeLLM(script([call("book", day="tuesday")], "Booked."), Latency(first_s=0.1))
    stack = fake_stack(stt=stt, llm=llm, tts=FakeTTS(), turn=_mid_sentence_model())
    stack.tools = box(booking(log, 0.2))
    conv, _, events = run_virtual(converse(stack, PAUSE_AND_GO_ON,
                                           options=TurnOptions(reask_s=0.0)))
    # The speculative reply asked for book at ~1.9 s; the caller went on at 2.2 s.
    assert conv.stats["wasted"] == 1
    assert llm.requests[0][-1].content == "book tuesday"
    (start, name, _), = log.started  # once: for the confirmed turn only
    (trace,) = conv.traces
    confirmed = trace["speech_end_wall"] + trace["ms_after_speech_end"]["turn_confirmed"] / 1e3
    assert start >= confirmed - conv._wall_offset - 1e-9
    assert start > 3.2  # after the caller's second stretch of speech
    assert [e[:2] for e in tool_events(events)] == [("book", "started"), ("book", "ok")]
    assert conv.history[-1].content == "Booked."


@pytest.mark.parametrize("failure", ["timeout", "error"])
def test_a_tool_that_times_out_or_fails_gets_an_apology_and_the_call_goes_on(failure, caplog):
    log = Log()
    find = (slots(log, 5.0, timeout_s=0.5) if failure == "timeout"
            else slots(log, 0.2, fail=True))
    llm = FakeLLM(lambda m: "Hello again." if "again" in m[-1].content
                  else ["One moment.", call("find_slots", day="monday")])
    tts = FakeTTS()
    stack = fake_stack(stt=FakeSTT(["slots monday", "hi again"]), llm=llm, tts=tts)
    stack.tools = box(find)
    conv, _, events = run_virtual(converse(
        stack, [("silence", 0.5), ("speech", 1.0), ("silence", 3.0), ("speech", 1.0)],
        options=TurnOptions(speculate=False)))
    assert tts.spoken == ["One moment.", APOLOGY, "Hello again."]
    assert [t["outcome"] for t in conv.traces] == ["completed", "completed"]
    status = [e for e in tool_events(events) if e[1] != "started"]
    assert status == [("find_slots", failure,
                       pytest.approx(500.0 if failure == "timeout" else 200.0), False)]
    assert not [e for e in events if e["type"] == "error"]
    assert len(llm.requests) == 2  # no continuation after the failure; the next turn asked
    tool_msg = next(m for m in conv.history if m.role == "tool")
    assert "error" in json.loads(tool_msg.content)
    assert "Jane" not in caplog.text and "Jane" not in json.dumps(events)


def test_barge_in_during_a_side_effect_cancels_the_wait_not_the_booking():
    log = Log()
    records: list[dict[str, object]] = []
    llm = FakeLLM(lambda m: "You are booked." if m[-1].role == "tool" else "Saturday works."
                  if "saturday" in m[-1].content else ["Booking that now.",
                                                        call("book", day="friday")])
    tts = FakeTTS()
    stt = FakeSTT(["book friday", "wait what about saturday"])
    stack = fake_stack(stt=stt, llm=llm, tts=tts)
    stack.tools = box(booking(log, 3.0), filler_after_s=0.0)

    conv, _, events = run_virtual(converse(
        stack, [("silence", 0.5), ("speech", 1.0), ("silence", 1.2), ("speech", 1.0)],
        options=TurnOptions(speculate=False), records=[records.append]))
    # The caller spoke over the agent at 2.9 s, while book (started ~1.5 s) still ran.
    assert conv.stats["interruptions"] == 1
    assert [name for _, name in log.ended] == ["book"]  # it completed
    assert "You are booked." not in tts.spoken  # the wait was cancelled: no continuation
    assert [e[:2] for e in tool_events(events)][:2] == [("book", "started"), ("book", "ok")]
    assert conv.traces[0]["outcome"] == "interrupted"
    (rec,) = [r for r in records if r["name"] == "book"]
    assert rec["status"] == "ok" and json.loads(rec["arguments"]) == {"day": "friday"}
    # The booking is in the history, so the next reply knows it happened.
    roles = [m.role for m in conv.history]
    assert "tool" in roles
    assert json.loads(next(m for m in conv.history if m.role == "tool").content) == {
        "reference": "BK-1"}


def test_independent_calls_of_one_round_run_concurrently():
    log = Log()
    llm = FakeLLM(script([call("find_slots", day="monday"), call("book", day="tuesday")],
                         "Done."))
    stack = fake_stack(stt=FakeSTT(["both please"]), llm=llm, tts=FakeTTS())
    stack.tools = box(slots(log, 1.0), booking(log, 1.0), filler_after_s=0.0)
    conv, _, events = run_virtual(converse(stack, [("silence", 0.5), ("speech", 1.0)],
                                           options=TurnOptions(speculate=False)))
    (t1, n1, _), (t2, n2, _) = log.started
    assert {n1, n2} == {"find_slots", "book"}
    assert t1 == pytest.approx(t2)
    assert [t for t, _ in log.ended] == pytest.approx([t1 + 1.0, t1 + 1.0])  # not 2 s
    second = llm.requests[1]
    assert [m.tool_call_id for m in second if m.role == "tool"] == ["c-find_slots-1",
                                                                   "c-book-1"]
    assert conv.history[-1].content == "Done."


def test_rounds_are_bounded_and_the_last_round_offers_no_tools():
    log = Log()
    llm = FakeLLM(lambda m: ["Still looking.", call("find_slots", day="x")])
    stack = fake_stack(stt=FakeSTT(["loop"]), llm=llm, tts=FakeTTS())
    stack.tools = Toolbox.of([slots(log, 0.1)], max_rounds=2, filler_after_s=0.0)
    conv, _, _ = run_virtual(converse(stack, [("silence", 0.5), ("speech", 1.0)],
                                      options=TurnOptions(speculate=False)))
    assert llm.offered == [("find_slots",), ("find_slots",), ()]
    assert len(log.started) == 2  # rounds 1 and 2; round 3 could only speak
    assert conv.history[-1].content == "Still looking."


def test_tool_calls_are_recorded_with_redacted_arguments_also_when_they_end_late(tmp_path):
    from rejoinder.store import Recorder, Store

    async def main():
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'calls.db'}")
        await store.migrate()
        recorder = Recorder(store, owns_store=True)
        recorder.start()
        log = recorder.call("c1", transport="webrtc", agent="a")
        for event in (
            {"type": "tool_record", "turn": 1, "name": "crm_lookup", "status": "ok",
             "ms": 12.5, "prefetched": False,
             "arguments": '{"phone": "call me on 555 123 4567"}'},
            {"type": "trace", "turn": 1, "outcome": "interrupted"},
            # A side effect that completed after its turn was recorded (barge-in).
            {"type": "tool_record", "turn": 1, "name": "book", "status": "ok", "ms": 3000.0,
             "prefetched": False, "arguments": '{"day": "friday"}'},
        ):
            log.on_event(event)
        await recorder.flush()
        record = await store.get_call("c1")
        await recorder.close()
        return record

    record = asyncio.run(main())  # the database answers from a thread: real time
    (turn,) = record["turns"]
    calls = turn["tool_calls"]
    assert [(c["name"], c["status"], c["duration_ms"]) for c in calls] == [
        ("crm_lookup", "ok", 12.5), ("book", "ok", 3000.0)]
    assert "4567" not in calls[0]["arguments"] and "[" in calls[0]["arguments"]
    assert json.loads(calls[1]["arguments"]) == {"day": "friday"}


class _PartialSTT(FakeSTT):
    """Gives its (only) transcript as the partial as soon as speech came."""

    def stream(self):
        from rejoinder.providers.base import BufferedSTTStream

        words = self.script[0]

        class Session(BufferedSTTStream):
            def partial(self) -> str:
                return words if self._speech else ""

        return Session(self)


def test_read_only_tools_are_prefetched_from_the_caller_words_while_they_speak():
    log = Log()
    stt = _PartialSTT(["any slots on tuesday for a haircut"], Latency(first_s=0.1))
    llm = FakeLLM(script([call("find_slots", day="tuesday"), call("book", day="tuesday")],
                         "Tuesday at ten."), Latency(first_s=0.1))
    stack = fake_stack(stt=stt, llm=llm, tts=FakeTTS())
    stack.tools = box(slots(log, 0.3), booking(log, 0.1), filler_after_s=0.0)
    conv, _, events = run_virtual(converse(stack, [("silence", 0.5), ("speech", 1.0)],
                                           options=TurnOptions(speculate=False)))
    # Read ahead at the first speech frame (~0.5 s): find_slots ran at once, while the
    # caller spoke; book, which changes something, waited for the confirmed reply.
    (t_find, _, _), (t_book, _, _) = log.started
    assert t_find < 1.5 < t_book
    assert [name for _, name, _ in log.started] == ["find_slots", "book"]
    assert conv.stats["prefetch_hits"] == 1 and conv.stats["prefetch_wasted"] == 0
    assert [e[:2] + e[3:] for e in tool_events(events)] == [
        ("find_slots", "ok", True), ("book", "started", False), ("book", "ok", False)]
    assert llm.prefills == []  # the prefetch request read the words ahead instead


def test_the_filler_waits_are_counted_from_the_confirmation_not_the_speculation():
    # The speculative reply asks at once (0.1 s into the pause); the turn is confirmed at
    # 1 s of silence; the tool answers 1.5 s after it started, 0.6 s after the confirmation:
    # the caller never waited filler_after_s (1 s), so no filler.
    log = Log()
    llm = FakeLLM(script([call("find_slots", day="monday")], "Monday at ten."))
    tts = FakeTTS()
    stack = fake_stack(stt=FakeSTT(["monday"]), llm=llm, tts=tts)
    stack.tools = box(slots(log, 1.5), filler_after_s=1.0)
    conv, _, events = run_virtual(converse(
        stack, [("silence", 0.5), ("speech", 1.0)],
        options=TurnOptions(end_silence_s=1.0, max_silence_s=1.5, finished_silence_s=0.0)))
    (trace,) = conv.traces
    assert trace["ms_after_speech_end"]["turn_confirmed"] == pytest.approx(1000.0, abs=25)
    assert tts.spoken == ["Monday at ten."]
    assert conv.stats["tool_fillers"] == 0 and conv.stats["prefetch_hits"] == 1


def test_tool_times_and_prefetch_counts_reach_the_metrics():
    from collections import Counter

    from rejoinder.observability.metrics import Metrics

    metrics = Metrics()
    stats = Counter({"prefetch_hits": 2, "prefetch_misses": 1, "prefetch_wasted": 1})
    call_metrics = metrics.call(stats)
    for status, ms in (("started", None), ("ok", 120.0), ("timeout", 2000.0)):
        call_metrics.on_event({"type": "tool", "turn": 1, "name": "find_slots",
                               "status": status, "ms": ms, "prefetched": False})
    text = metrics.exposition().decode()
    assert 'rejoinder_tool_duration_ms_count{status="ok",tool="find_slots"} 1.0' in text
    assert 'rejoinder_tool_duration_ms_count{status="timeout",tool="find_slots"} 1.0' in text
    assert "rejoinder_tool_prefetch_hits_total 2.0" in text
    assert "rejoinder_tool_prefetch_wasted_total 1.0" in text


def test_with_prefetch_off_no_tool_runs_before_the_turn_is_confirmed():
    log = Log()
    llm = FakeLLM(script([call("find_slots", day="monday")], "Monday at ten."))
    stack = fake_stack(stt=FakeSTT(["monday"]), llm=llm, tts=FakeTTS())
    stack.tools = Toolbox.of([slots(log, 0.2)], filler_after_s=0.0, prefetch=False)
    conv, _, _ = run_virtual(converse(
        stack, [("silence", 0.5), ("speech", 1.0)],
        options=TurnOptions(end_silence_s=1.0, max_silence_s=1.5, finished_silence_s=0.0)))
    (start, _, _), = log.started
    assert start == pytest.approx(1.5 + 1.0, abs=0.03)  # confirmed 1 s after the speech
    assert conv.stats["prefetch_misses"] == 1 and conv.stats["prefetch_hits"] == 0
