"""OpenTelemetry spans of each turn, captured by the SDK's in-memory exporter after a
scripted call on the fake providers (virtual time): exact parents, names, times and
attributes; no transcripts unless asked for; no SDK loaded when telemetry is off."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from rejoinder.config import Config, TelemetryOptions, load_config
from rejoinder.core.clock import Clock
from rejoinder.core.errors import ConfigError
from rejoinder.observability.hub import Observability, providers
from rejoinder.observability.tracing import Telemetry
from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack, run_virtual
from rejoinder.testing.loopback import Ear, script_audio, speak
from rejoinder.turn.engine import Conversation

MS = 1_000_000  # ns


class WallClock(Clock):
    """Wall time 1000 s ahead of the loop's: whole, exact numbers in the records."""

    def wall(self) -> float:
        return self.now() + 1000.0


def _spans(*, pii: bool = False, fail: bool = False) -> list[ReadableSpan]:
    stt = FakeSTT(["what time is it"], Latency(first_s=0.1))
    llm = FakeLLM(["Sure, I can help."], Latency(first_s=0.2, per_item_s=0.05,
                                                 fail="timeout" if fail else None))
    llm.first_item_timeout_s = 3.0
    stack = fake_stack(stt=stt, llm=llm, tts=FakeTTS(Latency(first_s=0.05)))
    exporter = InMemorySpanExporter()
    config = Config(telemetry=TelemetryOptions(pii=pii))
    telemetry = Telemetry(config.telemetry, providers(config, stack), exporter=exporter,
                          batch=False, clock=WallClock())
    spans = telemetry.call("call-1")

    async def main() -> None:
        clock = WallClock()
        conv = Conversation(stack, "Be brief.", events=spans.on_event, clock=clock,
                            call_id="call-1")
        ear = asyncio.create_task(Ear(conv.playout, clock).run())
        await conv.run(speak(script_audio([("silence", 0.5), ("speech", 1.0),
                                           ("silence", 5.0)]), clock))
        ear.cancel()

    run_virtual(main())
    telemetry.shutdown()
    return list(exporter.get_finished_spans())


def test_one_span_per_turn_with_a_child_per_stage_at_the_stamped_times() -> None:
    spans = _spans()
    by_name = {s.name: s for s in spans}
    assert sorted(by_name) == sorted(["turn", "vad_end", "turn_confirmed", "stt_final",
                                      "llm_first_token", "first_clause", "tts_first_audio",
                                      "first_audio_sent"])
    turn = by_name["turn"]
    assert turn.parent is None
    for s in spans:
        if s is not turn:
            assert s.parent is not None and s.parent.span_id == turn.context.span_id, s.name
            assert s.context.trace_id == turn.context.trace_id
        assert s.attributes is not None
        assert s.attributes["gen_ai.conversation.id"] == "call-1"
        assert s.attributes["rejoinder.call_id"] == "call-1"
    # The caller stops at 1.5 s on the loop, 1001.5 s on the wall clock; speculation at
    # the 100 ms pause: transcript at 200 ms, confirmed at 300, first token at 400, the
    # clause "Sure, I can help." at 550, its audio at 600, taken by the transport at 605.
    base = 1_001_500 * MS
    assert turn.start_time == base
    times = {s.name: ((s.start_time or 0) - base, (s.end_time or 0) - base) for s in spans}
    assert times["vad_end"] == (0, 100 * MS)
    assert times["turn_confirmed"] == (0, 300 * MS)
    assert times["stt_final"] == (100 * MS, 200 * MS)
    assert times["llm_first_token"] == (200 * MS, 400 * MS)
    assert times["first_clause"] == (400 * MS, 550 * MS)
    assert times["tts_first_audio"] == (550 * MS, 600 * MS)
    assert times["first_audio_sent"] == (600 * MS, 605 * MS)
    # The turn lasts until its record: the reply has played to the end.
    assert (turn.end_time or 0) - base > 605 * MS
    assert dict(turn.attributes or {}) == {
        "gen_ai.conversation.id": "call-1", "rejoinder.call_id": "call-1",
        "rejoinder.turn": 1, "rejoinder.turn.outcome": "completed",
        "rejoinder.speculation": "committed", "rejoinder.tts_cached": False}
    assert dict(by_name["llm_first_token"].attributes or {}) == {
        "gen_ai.conversation.id": "call-1", "rejoinder.call_id": "call-1",
        "rejoinder.stage": "llm_first_token", "gen_ai.operation.name": "chat",
        "gen_ai.system": "fake-llm", "gen_ai.provider.name": "fake-llm",
        "gen_ai.request.model": "fake-llm", "gen_ai.request.temperature": 0.3,
        "gen_ai.request.max_tokens": 60}
    assert by_name["stt_final"].attributes["rejoinder.provider"] == "fake-stt"  # type: ignore[index]
    assert by_name["tts_first_audio"].attributes["rejoinder.provider"] == "fake-tts"  # type: ignore[index]
    assert turn.resource.attributes["service.name"] == "rejoinder"


def test_no_transcript_on_any_span_unless_pii_is_enabled() -> None:
    for s in _spans():
        values = [str(v) for v in (s.attributes or {}).values()]
        assert not any("what time" in v or "help" in v for v in values), s.name
        assert not any("pii" in k for k in (s.attributes or {})), s.name
    (turn,) = [s for s in _spans(pii=True) if s.name == "turn"]
    assert turn.attributes is not None
    assert turn.attributes["rejoinder.pii.user_text"] == "what time is it"
    assert turn.attributes["rejoinder.pii.agent_text"] == "Sure, I can help."


def test_a_failed_turn_is_an_error_span_with_its_code() -> None:
    spans = _spans(fail=True)
    (turn,) = [s for s in spans if s.name == "turn"]
    assert turn.status.status_code == StatusCode.ERROR
    assert turn.attributes is not None and turn.attributes["error.type"] == "llm_timeout"
    assert turn.attributes["rejoinder.turn.outcome"] == "failed"
    assert sorted(s.name for s in spans if s is not turn) == [
        "stt_final", "turn_confirmed", "vad_end"]


def test_measured_latency_lands_on_its_turn_span() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry(TelemetryOptions(), providers(Config(), fake_stack()),
                          exporter=exporter, batch=False, clock=WallClock())
    spans = telemetry.call("c")
    spans.on_event({"type": "measured", "turn": 3, "v2v_ms": 655.5})

    async def main() -> None:
        spans.on_event({"type": "trace", "turn": 3, "outcome": "completed",
                        "speech_end_wall": 1000.25, "ms_after_speech_end": {"speech_end": 0.0}})

    run_virtual(main())
    (turn,) = exporter.get_finished_spans()
    assert turn.attributes is not None and turn.attributes["rejoinder.caller_v2v_ms"] == 655.5


def test_telemetry_is_off_by_default_and_the_sdk_is_never_imported() -> None:
    code = (
        "import sys\n"
        "from rejoinder.config import Config\n"
        "from rejoinder.server.app import Server\n"
        "from rejoinder.testing import fake_stack\n"
        "server = Server(Config(), fake_stack())\n"
        "server.observability.attach('c', {})\n"
        "assert server.observability.telemetry is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_an_otlp_endpoint_turns_tracing_on() -> None:
    config = load_config(env={"REJOINDER_TELEMETRY__OTLP_ENDPOINT":
                              "http://127.0.0.1:4318/v1/traces"})
    assert config.telemetry.otlp_endpoint == "http://127.0.0.1:4318/v1/traces"
    hub = Observability(config, fake_stack())
    assert hub.telemetry is not None
    assert len(hub.attach("c")) == 2  # metrics and spans
    hub.close()
    assert hub.telemetry is None
    with pytest.raises(ConfigError, match="telemetry.otlp_endpoint"):
        TelemetryOptions(otlp_endpoint="127.0.0.1:4317")
