"""The server's metrics and traces, and what each call subscribes to them.

    hub = Observability(config, stack, active_calls=lambda: len(calls), recorder=recorder)
    call.observers.extend(hub.attach(call.id, call.conversation.stats))
    ...
    hub.detach(call.id)          # the call ended
    hub.close()                  # the server stops: pending spans are exported

Traces exist only when ``[telemetry] otlp_endpoint`` is set (or a ``telemetry`` is
given, as the tests do); otherwise the OpenTelemetry SDK is never imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rejoinder.core.errors import MissingExtraError
from rejoinder.observability.metrics import CallMetrics, Metrics
from rejoinder.providers.fallback import chain_counts

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rejoinder.config import Config
    from rejoinder.observability.tracing import Providers, Telemetry
    from rejoinder.providers.base import Stack
    from rejoinder.store import Recorder

Observer = Callable[[dict[str, object]], None]


class Observability:
    def __init__(self, config: Config, stack: Stack, *,
                 active_calls: Callable[[], int] | None = None,
                 recorder: Recorder | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self.metrics = Metrics()
        self.metrics.watch(
            active_calls=active_calls,
            queue_depth=(lambda: recorder.pending) if recorder is not None else None,
            dropped=(lambda: recorder.dropped) if recorder is not None else None,
            # Read at scrape time from the providers that keep them (the phrase cache,
            # the embedded LLM); other providers have no such numbers.
            phrase_cache=getattr(stack.tts, "stats", None),
            llm_prompt=getattr(stack.llm, "prompt_cache_stats", None),
            fallback=chain_counts(stack.stt, stack.llm, stack.tts))
        if telemetry is None and config.telemetry.otlp_endpoint:
            telemetry = start_telemetry(config, stack)
        self.telemetry = telemetry
        self._calls: dict[str, CallMetrics] = {}

    def attach(self, call_id: str, stats: Mapping[str, int] | None = None) -> list[Observer]:
        """The observers of one call's events (metrics, and spans when tracing)."""
        metrics = self._calls[call_id] = self.metrics.call(stats)
        observers: list[Observer] = [metrics.on_event]
        if self.telemetry is not None:
            observers.append(self.telemetry.call(call_id).on_event)
        return observers

    def detach(self, call_id: str) -> None:
        if (metrics := self._calls.pop(call_id, None)) is not None:
            metrics.close()

    def close(self) -> None:
        if self.telemetry is not None:
            self.telemetry.shutdown()
            self.telemetry = None


def start_telemetry(config: Config, stack: Stack) -> Telemetry:
    """OTLP export of turn spans to ``config.telemetry.otlp_endpoint``."""
    try:
        from rejoinder.observability.tracing import Telemetry
    except ImportError as exc:
        raise MissingExtraError("opentelemetry-sdk", "telemetry") from exc
    return Telemetry(config.telemetry, providers(config, stack))


def providers(config: Config, stack: Stack) -> Providers:
    """What the spans say about ``stack``."""
    from rejoinder.observability.tracing import Providers

    llm = config.llm
    return Providers(llm=stack.llm.name, llm_model=llm.model or stack.llm.name,
                     llm_temperature=llm.temperature, llm_max_tokens=llm.max_tokens,
                     stt=stack.stt.name, tts=stack.tts.name)
