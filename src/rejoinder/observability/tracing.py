"""OpenTelemetry traces: one span per finished turn, a child span per server stage.

Built from the ``trace`` event each turn ends with (``observability/trace.py``), after
the fact: the stage stamps give every span's start and end, so nothing runs on the call
path while the turn is in progress. Imported only when ``[telemetry] otlp_endpoint`` is
set (the server imports this module lazily), so a server without telemetry never loads
the SDK.

    turn                      end of speech -> the turn's record (the reply played,
    │                         or interrupted, or failed)
    ├── vad_end               end of speech -> the VAD's end (speculation starts)
    ├── turn_confirmed        end of speech -> the end of the turn decided
    ├── stt_final             vad_end -> the final transcript
    ├── llm_first_token       stt_final -> the LLM's first token (gen_ai.* attributes)
    ├── first_clause          llm_first_token -> the first clause complete
    ├── tts_first_audio       first_clause -> the first synthesised audio
    └── first_audio_sent      the later of tts_first_audio and turn_confirmed -> the
                              first audio frame taken by the transport

Every span carries the call id (``gen_ai.conversation.id`` and ``rejoinder.call_id``).
No personal data: transcripts go on the turn span only when ``pii`` is enabled, and then
only under ``rejoinder.pii.*`` keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Status, StatusCode

from rejoinder.config import TelemetryOptions
from rejoinder.core.clock import Clock

Event = dict[str, object]
AttributeValue = str | bool | int | float

#: Each stage's span starts at the stamp of the stage it waits for.
_AFTER: dict[str, Sequence[str]] = {
    "vad_end": ("speech_end",),
    "turn_confirmed": ("speech_end",),
    "stt_final": ("vad_end",),
    "llm_first_token": ("stt_final",),
    "first_clause": ("llm_first_token",),
    "tts_first_audio": ("first_clause",),
    "first_audio_sent": ("tts_first_audio", "turn_confirmed"),
}
_STAGES = tuple(_AFTER)


@dataclass(frozen=True)
class Providers:
    """What the spans say about the stack: provider names and the LLM's model."""

    llm: str = "llm"
    llm_model: str = ""
    llm_temperature: float | None = None
    llm_max_tokens: int | None = None
    stt: str = "stt"
    tts: str = "tts"


class Telemetry:
    """A tracer provider of its own (the global one is left alone) and its exporter."""

    def __init__(self, options: TelemetryOptions, providers: Providers, *,
                 exporter: SpanExporter | None = None, batch: bool = True,
                 clock: Clock | None = None) -> None:
        self.options = options
        self.providers = providers
        self.clock = clock or Clock()
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
            exporter = OTLPSpanExporter(endpoint=options.otlp_endpoint)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": options.service_name}))
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("rejoinder")

    def call(self, call_id: str) -> TurnSpans:
        return TurnSpans(self, call_id)

    def shutdown(self) -> None:
        """Export what is pending, then stop."""
        self.provider.shutdown()


class TurnSpans:
    """One call's spans; subscribe :meth:`on_event` to the call's events."""

    def __init__(self, telemetry: Telemetry, call_id: str) -> None:
        self.telemetry = telemetry
        self.call_id = call_id
        self._v2v: dict[int, float] = {}
        self._user: dict[int, str] = {}
        self._agent: dict[int, list[str]] = {}

    def on_event(self, event: Event) -> None:
        kind, turn = event.get("type"), event.get("turn")
        if not isinstance(turn, int):
            return
        if kind == "trace":
            self._turn(turn, event)
        elif kind == "measured":
            v2v = event.get("v2v_ms")
            if isinstance(v2v, int | float):
                self._v2v[turn] = float(v2v)
        elif self.telemetry.options.pii:
            if kind == "user":
                self._user[turn] = str(event.get("text", ""))
            elif kind == "agent":
                self._agent.setdefault(turn, []).append(str(event.get("text", "")))

    def _turn(self, turn: int, record: Event) -> None:
        wall, ms = record.get("speech_end_wall"), record.get("ms_after_speech_end")
        user, agent = self._user.pop(turn, None), self._agent.pop(turn, None)
        v2v = self._v2v.pop(turn, None)
        if not isinstance(wall, int | float) or not isinstance(ms, dict):
            return  # no end of speech: nothing to place the spans at
        # The record's times are on a 0.1 ms grid: whole nanoseconds, exactly.
        base = round(wall * 10_000) * 100_000
        at = {"speech_end": base}
        at.update({s: base + round(v * 10) * 100_000 for s, v in ms.items()
                   if s in _AFTER and isinstance(v, int | float)})
        end = max(round(self.telemetry.clock.wall() * 1_000_000) * 1_000, *at.values())
        ids: dict[str, AttributeValue] = {"gen_ai.conversation.id": self.call_id,
                                          "rejoinder.call_id": self.call_id}
        attrs: dict[str, AttributeValue] = {**ids, "rejoinder.turn": turn,
                                            "rejoinder.turn.outcome": str(record.get("outcome"))}
        for key in ("speculation", "tts_cached"):
            if isinstance(value := record.get(key), str | bool):
                attrs[f"rejoinder.{key}"] = value
        if v2v is not None:
            attrs["rejoinder.caller_v2v_ms"] = v2v
        error = record.get("error")
        if isinstance(error, str):
            attrs["error.type"] = error
        if user is not None:
            attrs["rejoinder.pii.user_text"] = user
        if agent is not None:
            attrs["rejoinder.pii.agent_text"] = " ".join(agent)
        tracer = self.telemetry.tracer
        parent = tracer.start_span("turn", start_time=base, attributes=attrs)
        if record.get("outcome") == "failed":
            parent.set_status(Status(StatusCode.ERROR))
        context = trace.set_span_in_context(parent)
        for stage in _STAGES:
            if stage not in at:
                continue
            start = max((at[s] for s in _AFTER[stage] if s in at), default=base)
            span = tracer.start_span(stage, context=context, start_time=min(start, at[stage]),
                                     attributes={**ids, **self._stage_attributes(stage)})
            span.end(end_time=at[stage])
        parent.end(end_time=end)

    def _stage_attributes(self, stage: str) -> dict[str, AttributeValue]:
        p = self.telemetry.providers
        attrs: dict[str, AttributeValue] = {"rejoinder.stage": stage}
        if stage == "llm_first_token":
            # OpenTelemetry GenAI semantic conventions.
            attrs.update({"gen_ai.operation.name": "chat", "gen_ai.system": p.llm,
                          "gen_ai.provider.name": p.llm})
            if p.llm_model:
                attrs["gen_ai.request.model"] = p.llm_model
            if p.llm_temperature is not None:
                attrs["gen_ai.request.temperature"] = p.llm_temperature
            if p.llm_max_tokens is not None:
                attrs["gen_ai.request.max_tokens"] = p.llm_max_tokens
        elif stage == "stt_final":
            attrs["rejoinder.provider"] = p.stt
        elif stage == "tts_first_audio":
            attrs["rejoinder.provider"] = p.tts
        return attrs
