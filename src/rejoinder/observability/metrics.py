"""Prometheus metrics (``GET /metrics``), fed by the events each call already sends.

One :class:`Metrics` per server, with its own registry (never the process-wide default:
several servers, and the tests, live in one process). Per call, :meth:`Metrics.call`
gives a :class:`CallMetrics` to subscribe to the call's events; on the call path it does
no more than increment a counter or observe a histogram per event. Everything the
server or its providers count anyway (active calls, the store's queue, the phrase cache,
the LLM's prefix cache, the conversations' ``stats``) is read when Prometheus scrapes,
not pushed.

    rejoinder_turn_stage_ms{stage}             histogram: ms after the caller's end of
                                               speech (vad_end ... first_audio_sent)
    rejoinder_end_of_turn_delay_ms             histogram: end of speech -> turn confirmed
    rejoinder_caller_v2v_ms                    histogram: voice-to-voice, measured by the
                                               caller ({"type": "measured"} messages)
    rejoinder_tool_duration_ms{tool,status}    histogram: a tool call's time (ok, error,
                                               timeout; prefetched ones too)
    rejoinder_barge_in_stop_ms                 histogram: caller speech over the agent
                                               until its audio was held (``hold`` events)
    rejoinder_turns_total{outcome}             counter
    rejoinder_guardrail_total{action,rule}     caller turns and clauses blocked or flagged
    rejoinder_speculative_{starts,commits,wasted,restarts,restarts_kept}_total
    rejoinder_{interruptions,false_interruptions,backchannels,take_backs,fillers}_total
    rejoinder_tool_fillers_total, rejoinder_tool_prefetch_{hits,misses,wasted}_total
    rejoinder_provider_errors_total{provider,code}   a turn failed: llm_timeout, ...
    rejoinder_phrase_cache_{hits,misses}_total
    rejoinder_llm_prompt_tokens_total{source}  source: cached | evaluated
    rejoinder_active_calls, rejoinder_store_queue_depth      gauges
    rejoinder_store_dropped_total              records dropped by a full store queue
    rejoinder_provider_fallbacks_total{kind,backend,reason}  a backend of a chain passed
                                               a request on ([[llm.backends]], ...)
    rejoinder_provider_timeouts_total{kind,backend}, rejoinder_provider_breaker_transitions_total
                                               {kind,backend,state}
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

Event = dict[str, object]

#: The stages of a turn, as in the trace record (``observability/trace.py``).
STAGES = ("vad_end", "turn_confirmed", "stt_final", "llm_first_token", "first_clause",
          "tts_first_audio", "first_audio_sent")
#: Replies land between a few hundred ms and ~3 s after the end of speech; finer where
#: the 500 ms target is, a few wide ones above for the outliers.
MS_BUCKETS = (25.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 600.0, 700.0,
              800.0, 1000.0, 1250.0, 1500.0, 2000.0, 2500.0, 3000.0, 5000.0)
#: The agent is held after 60 ms of caller speech by default, counted in 20 ms frames;
#: the review's target is 200 ms.
BARGE_IN_BUCKETS = (20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 150.0, 200.0, 250.0, 300.0, 400.0,
                    500.0, 750.0, 1000.0, 2000.0)
OUTCOMES = ("completed", "interrupted", "abandoned", "failed", "empty")
#: Conversation.stats keys, each a counter rejoinder_<name>_total.
STATS = {"speculative_starts": "Replies started speculatively at a pause",
         "commits": "Speculative replies whose turn was confirmed",
         "wasted": "Speculative replies cancelled because the caller went on",
         "restarts": "Speculations whose words were taken again: the caller made sounds since",
         "restarts_kept": "Speculations whose words taken again were the same: the reply kept",
         "interruptions": "Replies cut off by the caller speaking over them",
         "false_interruptions": "Caller sounds over the agent that let it resume",
         "backchannels": "Backchannels (mm-hm) over the agent that let it resume",
         "take_backs": "Callers who went on as the reply started (take_back_s): it stopped",
         "fillers": "Fillers said while no reply was ready",
         "tool_fillers": "Fillers said while a tool was slow",
         "prefetch_hits": "Read-only tool calls started before the turn was confirmed, used",
         "prefetch_misses": "Read-only tool calls a confirmed reply had to start itself",
         "prefetch_wasted": "Read-only tool calls started ahead and never used"}
_STAT_NAMES = {"speculative_starts": "speculative_starts", "commits": "speculative_commits",
               "wasted": "speculative_wasted", "restarts": "speculative_restarts",
               "restarts_kept": "speculative_restarts_kept",
               "prefetch_hits": "tool_prefetch_hits", "prefetch_misses": "tool_prefetch_misses",
               "prefetch_wasted": "tool_prefetch_wasted"}
_CODE = re.compile(r"[a-z][a-z0-9_.]{0,63}")  # an error code; anything else is "error"
_RULE = re.compile(r"[a-z][a-z0-9_]{0,39}(?::[a-z0-9_]{1,40})?")  # a guardrail's rule name

__all__ = ["BARGE_IN_BUCKETS", "CONTENT_TYPE_LATEST", "MS_BUCKETS", "STAGES", "CallMetrics",
           "Metrics"]


class Metrics:
    """The server's metrics and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_ms = Histogram(
            "rejoinder_turn_stage_ms", "Server stages of a turn, ms after the caller's end "
            "of speech", ["stage"], buckets=MS_BUCKETS, registry=r)
        self.end_of_turn_ms = Histogram(
            "rejoinder_end_of_turn_delay_ms", "Caller's end of speech to the turn confirmed",
            buckets=MS_BUCKETS, registry=r)
        self.caller_v2v_ms = Histogram(
            "rejoinder_caller_v2v_ms", "Voice-to-voice latency measured by the caller",
            buckets=MS_BUCKETS, registry=r)
        self.tool_ms = Histogram(
            "rejoinder_tool_duration_ms", "Time a tool call took", ["tool", "status"],
            buckets=MS_BUCKETS, registry=r)
        self.barge_in_stop_ms = Histogram(
            "rejoinder_barge_in_stop_ms", "Caller speech over the agent until the agent's "
            "audio was held (at the server; the transport's delay comes on top)",
            buckets=BARGE_IN_BUCKETS, registry=r)
        self.turns = PromCounter("rejoinder_turns", "Finished turns, by outcome",
                                 ["outcome"], registry=r)
        self.provider_errors = PromCounter(
            "rejoinder_provider_errors", "Turns that failed, by provider and error code "
            "(llm_timeout, stt_unavailable, ...)", ["provider", "code"], registry=r)
        self.guardrails = PromCounter(
            "rejoinder_guardrail", "Caller turns and clauses a guardrail blocked or flagged",
            ["action", "rule"], registry=r)
        # Bound once: an event then costs a dictionary lookup and an increment.
        self._stage = {s: self.stage_ms.labels(stage=s) for s in STAGES}
        self._outcome = {o: self.turns.labels(outcome=o) for o in (*OUTCOMES, "other")}
        self._live: dict[int, Mapping[str, int]] = {}
        self._ended: Counter[str] = Counter()
        self._sources = _Sources(self)
        r.register(self._sources)

    # -- what is read when Prometheus scrapes ------------------------------------------
    def watch(self, *, active_calls: Callable[[], int] | None = None,
              queue_depth: Callable[[], int] | None = None,
              dropped: Callable[[], int] | None = None,
              phrase_cache: Callable[[], Mapping[str, object]] | None = None,
              llm_prompt: Callable[[], Mapping[str, int]] | None = None,
              fallback: Callable[[], Mapping[tuple[str, str, str, str], int]] | None = None,
              ) -> None:
        """Numbers kept elsewhere, read at each scrape; None: not exposed."""
        s = self._sources
        s.active_calls, s.queue_depth, s.dropped = active_calls, queue_depth, dropped
        s.phrase_cache, s.llm_prompt = phrase_cache, llm_prompt
        s.fallback = fallback

    def exposition(self) -> bytes:
        """The Prometheus text format (``CONTENT_TYPE_LATEST``)."""
        return generate_latest(self.registry)

    # -- per call -------------------------------------------------------------------------
    def call(self, stats: Mapping[str, int] | None = None) -> CallMetrics:
        """Metrics of one call; ``stats``: its conversation's counters (read at scrape
        time while the call lasts, added to the totals when it ends)."""
        return CallMetrics(self, stats)

    def _stats_total(self) -> Counter[str]:
        total = Counter(self._ended)
        for stats in self._live.values():
            total.update(stats)
        return total


class CallMetrics:
    """Subscribe :meth:`on_event` to one call's events; :meth:`close` when it ends."""

    def __init__(self, metrics: Metrics, stats: Mapping[str, int] | None) -> None:
        self.metrics = metrics
        self._stats = stats
        if stats is not None:
            metrics._live[id(self)] = stats

    def on_event(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "trace":
            self._turn(event)
        elif kind == "error":
            code = event.get("code")
            code = code if isinstance(code, str) and _CODE.fullmatch(code) else "error"
            provider = code.split("_", 1)[0] if "_" in code else "server"
            self.metrics.provider_errors.labels(provider=provider, code=code).inc()
        elif kind == "guardrail":
            rule, action = event.get("rule"), event.get("action")
            rule = rule if isinstance(rule, str) and _RULE.fullmatch(rule) else "other"
            if action in ("blocked", "flagged"):
                self.metrics.guardrails.labels(action=action, rule=rule).inc()
        elif kind == "tool":
            status, ms, name = event.get("status"), event.get("ms"), event.get("name")
            if (status in ("ok", "error", "timeout") and isinstance(ms, int | float)
                    and math.isfinite(ms) and isinstance(name, str)):
                self.metrics.tool_ms.labels(tool=name[:64], status=status).observe(ms)
        elif kind == "hold":
            speech = event.get("speech_ms")
            if isinstance(speech, int | float) and math.isfinite(speech) and speech >= 0:
                self.metrics.barge_in_stop_ms.observe(speech)
        elif kind == "measured":
            v2v = event.get("v2v_ms")
            if isinstance(v2v, int | float) and math.isfinite(v2v):
                self.metrics.caller_v2v_ms.observe(v2v)

    def _turn(self, trace: Event) -> None:
        m = self.metrics
        outcome = trace.get("outcome")
        m._outcome.get(outcome if isinstance(outcome, str) else "", m._outcome["other"]).inc()
        ms = trace.get("ms_after_speech_end")
        # Only turns the caller ended: a greeting has no end of speech to count from.
        if not isinstance(ms, dict) or "vad_end" not in ms:
            return
        for stage, value in ms.items():
            child = m._stage.get(stage)
            if child is not None and isinstance(value, int | float):
                child.observe(value)
        confirmed = ms.get("turn_confirmed")
        if isinstance(confirmed, int | float):
            m.end_of_turn_ms.observe(confirmed)

    def close(self) -> None:
        """The call ended: its counters join the totals. Idempotent."""
        stats = self.metrics._live.pop(id(self), None)
        if stats is not None:
            self.metrics._ended.update(stats)


class _Sources(Collector):
    """Numbers read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.active_calls: Callable[[], int] | None = None
        self.queue_depth: Callable[[], int] | None = None
        self.dropped: Callable[[], int] | None = None
        self.phrase_cache: Callable[[], Mapping[str, object]] | None = None
        self.llm_prompt: Callable[[], Mapping[str, int]] | None = None
        self.fallback: Callable[[], Mapping[tuple[str, str, str, str], int]] | None = None

    def describe(self) -> Iterable[Metric]:
        return ()  # the set depends on what is watched; collected fresh each scrape

    def collect(self) -> Iterable[Metric]:
        total = self.metrics._stats_total()
        for key, doc in STATS.items():
            yield CounterMetricFamily(f"rejoinder_{_STAT_NAMES.get(key, key)}", doc,
                                      value=total.get(key, 0))
        if self.active_calls is not None:
            yield GaugeMetricFamily("rejoinder_active_calls", "Calls in progress",
                                    value=self.active_calls())
        if self.queue_depth is not None:
            yield GaugeMetricFamily("rejoinder_store_queue_depth",
                                    "Call records waiting to be written to the store",
                                    value=self.queue_depth())
        if self.dropped is not None:
            yield CounterMetricFamily("rejoinder_store_dropped",
                                      "Call records dropped because the store queue was full",
                                      value=self.dropped())
        if self.phrase_cache is not None:
            stats = self.phrase_cache()
            for key in ("hits", "misses"):
                value = stats.get(key)
                if isinstance(value, int | float):
                    yield CounterMetricFamily(f"rejoinder_phrase_cache_{key}",
                                              f"Phrase cache {key} (short phrases only)",
                                              value=value)
        if self.llm_prompt is not None:
            prompt = self.llm_prompt()
            family = CounterMetricFamily(
                "rejoinder_llm_prompt_tokens", "Prompt tokens of the local LLM's requests, "
                "reused from its prefix cache or evaluated", labels=["source"])
            for source in ("cached", "evaluated"):
                family.add_metric([source], prompt.get(source, 0))
            yield family
        if self.fallback is not None:
            yield from _fallback_families(self.fallback())


def _fallback_families(counts: Mapping[tuple[str, str, str, str], int]) -> Iterable[Metric]:
    """The counts of the provider chains (``providers.breaker.FallbackStats``)."""
    fallbacks = CounterMetricFamily(
        "rejoinder_provider_fallbacks", "Requests a backend passed on to the next one, by "
        "why: failed, timeout, unavailable, open (its circuit)",
        labels=["kind", "backend", "reason"])
    timeouts = CounterMetricFamily("rejoinder_provider_timeouts",
                                   "Backend requests that missed a time limit",
                                   labels=["kind", "backend"])
    breakers = CounterMetricFamily("rejoinder_provider_breaker_transitions",
                                   "Circuit breaker changes, by the state entered",
                                   labels=["kind", "backend", "state"])
    for (event, kind, backend, detail), n in sorted(counts.items()):
        if event == "fallback":
            fallbacks.add_metric([kind, backend, detail], n)
        elif event == "timeout":
            timeouts.add_metric([kind, backend], n)
        elif event == "breaker":
            breakers.add_metric([kind, backend, detail], n)
    yield from (fallbacks, timeouts, breakers)
