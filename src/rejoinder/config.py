"""Configuration: one TOML file plus environment overrides, validated on load.

Every section is a frozen dataclass. ``REJOINDER_<SECTION>__<FIELD>`` in the
environment overrides the file, e.g. ``REJOINDER_LLM__BASE_URL``. Any bad value
raises :class:`ConfigError` naming the field (``llm.base_url``).

    [server]   host, port, ice_servers, media_addresses, max_calls
    [agent]    name, system_prompt, greeting, tools, mcp_servers, webhook_tools, ...
    [turn]     vad_threshold, end_silence_s, min_speech_s, barge_in_min_s, ...
    [stt]      provider ("local" | "remote"), url, api_key
    [llm]      provider ("local" | "openai"), base_url, model, api_key, ...
    [tts]      provider ("local" | "remote"), url, api_key, sample_rate
    [log]      level, json
    [store]    url, path, keep_days, prune_interval_s, queue_max, redact
    [telemetry] otlp_endpoint, service_name, pii
    [analytics] enabled, max_concurrent, max_attempts, retry_backoff_s, fields, ...
    [review]   days, v2v_p95_ms, phrase_cache_min, restart_max, cold_start_tax_ms, ...
    [telephony] public_url, twilio_auth_token, allow_unsigned, stream_token_ttl_s
    [guardrails] enabled, safe_line, deny_patterns, deny_topics, never_promise, ...
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rejoinder.core.bounds import check_numbers
from rejoinder.core.errors import ConfigError
from rejoinder.core.netloc import split_host, split_origin
from rejoinder.guardrails.options import GuardrailOptions
from rejoinder.turn.options import TurnOptions

ENV_PREFIX = "REJOINDER_"

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant on a phone call. Answer in one or two short "
    "spoken sentences. Never use lists, markdown, emoji or symbols."
)


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    # STUN/TURN URLs for real deployments, e.g. ["stun:stun.example.org:3478"].
    # Empty by default: works on loopback and LAN without contacting anyone.
    ice_servers: list[str] = field(default_factory=list)
    ice_username: str = ""
    ice_credential: str = ""
    # Addresses the server offers as its own media (ICE host) candidates. Empty means
    # "all local addresses", except that a server bound to 127.0.0.1 offers 127.0.0.1.
    media_addresses: list[str] = field(default_factory=list)
    max_calls: int = 8
    # Audio frames (20 ms each) the server buffers against network jitter before decoding;
    # aiortc's own default is 4. Every frame delays end-of-speech detection by 20 ms; 0
    # decodes each packet on arrival and drops the rare late one (fine on LAN and most
    # paths; raise it where packets arrive out of order).
    jitter_buffer_frames: int = 0
    # A call whose caller has not connected (ICE and DTLS) this long after the answer is
    # closed and frees its slot: a caller that never comes must not hold one.
    connect_timeout_s: float = 10.0
    # A connected caller whose audio stops arriving for this long has gone (process
    # killed, network lost) and the call is closed. Callers send audio all the time,
    # silence included (a browser with DTX still sends a packet every 400 ms), so only
    # a network outage this long drops a live caller: shorter frees slots sooner, longer
    # rides out longer outages (Wi-Fi roaming, a mobile handover: typically 1-3 s).
    media_timeout_s: float = 5.0
    # Web page origins (scheme://host[:port]) that may start calls, besides the server's
    # own; "*" for any. Requests without an Origin (programs, curl) are always allowed.
    allowed_origins: list[str] = field(default_factory=list)
    # Host names (name or name:port; "*" for any) the server answers to. Empty: when
    # bound to a loopback address, only loopback names with the server's port (against
    # DNS rebinding); when bound to any other address, any Host.
    allowed_hosts: list[str] = field(default_factory=list)
    # The operator's token (dashboard, /api/calls, /api/review, /api/stats, /metrics), sent
    # as "Authorization: Bearer <token>". Empty: those answer loopback clients only.
    admin_token: str = ""
    # Set: the call page and /api/offer need this key, or a call token "exp.signature"
    # signed with it (rejoinder.server.operator). Empty: anyone who reaches the page calls.
    call_key: str = ""
    # SIGTERM stops admitting calls and lets live ones finish for this long; then each is
    # ended with ``drain_goodbye`` spoken by the agent (rejoinder.server.drain).
    drain_s: float = 30.0
    drain_goodbye: str = "I'm sorry, I have to end our call now. Goodbye!"

    def __repr__(self) -> str:  # keep the token and the key out of logs and tracebacks
        token, key = ("***" if v else "" for v in (self.admin_token, self.call_key))
        return f"ServerOptions(host={self.host!r}, port={self.port!r}, " \
               f"max_calls={self.max_calls!r}, admin_token={token!r}, call_key={key!r})"

    def __post_init__(self) -> None:
        for name in ("admin_token", "call_key"):  # a short secret can be guessed
            value = getattr(self, name)
            if value and (len(value) < 16 or value != value.strip()):
                raise ConfigError(f"server.{name}",
                                  "must be at least 16 characters, without surrounding spaces")
        check_numbers(self, "server", {
            "port": (0, 65535), "max_calls": (1, 10_000), "jitter_buffer_frames": (0, 15),
            "connect_timeout_s": (0.0, 300.0), "media_timeout_s": (0.0, 300.0),
            "drain_s": (0.0, 86_400.0)})
        if self.connect_timeout_s <= 0:
            raise ConfigError("server.connect_timeout_s", "must be positive")
        if self.media_timeout_s <= 0:
            raise ConfigError("server.media_timeout_s", "must be positive")
        for origin in self.allowed_origins:
            if origin not in ("*", "null") and split_origin(origin) is None:
                raise ConfigError("server.allowed_origins",
                                  f"{origin!r} is not an origin like https://example.org")
        for host in self.allowed_hosts:
            if host != "*" and split_host(host) is None:
                raise ConfigError("server.allowed_hosts",
                                  f"{host!r} is not a host name like example.org[:port]")
        if not 0 <= self.jitter_buffer_frames <= 15:
            raise ConfigError("server.jitter_buffer_frames", "must be between 0 and 15")
        if not 0 <= self.port <= 65535:
            raise ConfigError("server.port", "must be between 0 and 65535")
        if self.max_calls < 1:
            raise ConfigError("server.max_calls", "must be at least 1")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ConfigError("server.ice_servers", f"{url!r} is not a stun:/turn: URL")


@dataclass(frozen=True)
class McpServerOptions:
    """One ``[[agent.mcp_servers]]``: a command to start (stdio) or a streamable HTTP url."""

    name: str = ""
    command: list[str] = field(default_factory=list)  # program and its arguments
    env: dict[str, str] = field(default_factory=dict)  # the subprocess's environment
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 5.0  # per call of any of its tools
    prefix: str = ""  # put before each tool's name (two servers with the same tool names)
    read_only: list[str] = field(default_factory=list)  # tools that change nothing

    def __post_init__(self) -> None:
        where = f"agent.mcp_servers.{self.name or '?'}"
        check_numbers(self, where, {"timeout_s": (0.001, 600.0)})
        if not self.name:
            raise ConfigError("agent.mcp_servers", "every server needs a name")
        if bool(self.command) == bool(self.url):
            raise ConfigError(where, "give either command (stdio) or url (streamable HTTP)")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url", "must start with http:// or https://")


@dataclass(frozen=True)
class WebhookToolOptions:
    """One ``[[agent.webhook_tools]]``: the arguments are POSTed as JSON to ``url``."""

    name: str = ""
    description: str = ""
    url: str = ""
    parameters: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}})  # JSON schema
    timeout_s: float = 5.0
    side_effects: bool = True  # false: read-only, may be prefetched
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_numbers(self, f"agent.webhook_tools.{self.name or '?'}",
                      {"timeout_s": (0.001, 600.0)})


@dataclass(frozen=True)
class AgentOptions:
    name: str = "Rejoinder"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    greeting: str = ""  # spoken when the call connects; empty for none
    # A built-in agent (rejoinder.agents, e.g. "booking"): its prompt, greeting and tools
    # where the fields above and tools are left at their defaults.
    profile: str = ""
    # Tools (rejoinder.tools): a Python module whose @tool functions (or TOOLS list) the
    # agent may call, MCP servers, HTTP webhooks.
    tools: str = ""
    mcp_servers: list[McpServerOptions] = field(default_factory=list)
    webhook_tools: list[WebhookToolOptions] = field(default_factory=list)
    max_tool_rounds: int = 3  # LLM -> tools -> LLM rounds in one reply, then it must answer
    # A tool wait longer than this gets tool_filler said, once (0: never).
    tool_filler_after_s: float = 1.0
    tool_filler: str = "Let me check that."
    tool_apology: str = "Sorry, I couldn't do that just now."  # a tool failed or timed out
    tool_prefetch: bool = True  # run read-only tools from the caller's words ahead of time

    def __post_init__(self) -> None:
        if self.profile:
            _apply_profile(self)
        check_numbers(self, "agent", {"max_tool_rounds": (1, 20),
                                      "tool_filler_after_s": (0.0, 60.0)})
        for name in ("tool_filler", "tool_apology"):
            if not getattr(self, name).strip():
                raise ConfigError(f"agent.{name}", "must not be empty")


def _apply_profile(agent: AgentOptions) -> None:
    """Fill in the built-in profile's prompt, greeting and tools where left at defaults."""
    from rejoinder.agents import PROFILES, profile

    if agent.profile not in PROFILES:
        raise ConfigError("agent.profile", f"no built-in agent {agent.profile!r} (there is: "
                          f"{', '.join(sorted(PROFILES))})")
    chosen = profile(agent.profile)
    for name, default in (("system_prompt", DEFAULT_SYSTEM_PROMPT), ("greeting", ""),
                          ("tools", "")):
        if getattr(agent, name) == default:
            object.__setattr__(agent, name, getattr(chosen, name))


@dataclass(frozen=True)
class _Backend:
    """What every ``[[stt.backends]]``, ``[[llm.backends]]``, ``[[tts.backends]]`` entry has
    besides its provider's own fields (rejoinder.providers.fallback): a name for logs and
    metrics (default: the provider and its place, "openai-1") and its circuit breaker."""

    name: str = ""
    timeout_s: float = 10.0  # the first item: token, transcript (whole request), audio
    stream_idle_timeout_s: float = 5.0  # every later one
    breaker_failures: int = 3  # failures within breaker_window_s that take it out...
    breaker_window_s: float = 60.0
    breaker_cooldown_s: float = 30.0  # ...for this long; then one request probes it

    def check(self, where: str) -> None:
        check_numbers(self, where, {"breaker_failures": (1, 1000),
                                    "breaker_window_s": (0.001, 86_400.0),
                                    "breaker_cooldown_s": (0.001, 86_400.0)})
        _idle_limit(where, self.stream_idle_timeout_s)
        if not 0 < self.timeout_s <= 600:
            raise ConfigError(f"{where}.timeout_s", "must be positive, at most 600 s")


@dataclass(frozen=True)
class LLMBackendOptions(_Backend):
    """One ``[[llm.backends]]``: the fields of [llm] for one provider, and its rule:
    ``route = "tools"`` (preferred when the turn offers tools), ``max_words`` (preferred
    when the caller's words are at most this many; 0: no such rule)."""

    provider: str = "local"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key: str = ""
    temperature: float = 0.3
    max_tokens: int = 60
    route: str = ""
    max_words: int = 0

    def check(self, where: str) -> None:
        super().check(where)
        check_numbers(self, where, {"temperature": (0.0, 2.0), "max_tokens": (1, 100_000),
                                    "max_words": (0, 10_000)})
        if self.provider not in ("local", "openai"):
            raise ConfigError(f"{where}.provider",
                              f"{self.provider!r} is not 'local' or 'openai'")
        if self.provider == "openai":
            if not self.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}.base_url", "must start with http:// or https://")
            if not self.model:
                raise ConfigError(f"{where}.model", "is required for an 'openai' provider")
        if self.route not in ("", "tools"):
            raise ConfigError(f"{where}.route", f"{self.route!r} is not '' or 'tools'")

    def __repr__(self) -> str:
        return f"LLMBackendOptions(name={self.name!r}, provider={self.provider!r}, " \
               f"base_url={self.base_url!r}, model={self.model!r})"


@dataclass(frozen=True)
class STTBackendOptions(_Backend):
    """One ``[[stt.backends]]``: the fields of [stt] for one provider."""

    provider: str = "local"
    url: str = ""
    api_key: str = ""
    streaming: bool = False

    def check(self, where: str) -> None:
        super().check(where)
        _remote_or_local(where, self.provider, self.url)
        _streaming(where, self.provider, self.streaming)

    def __repr__(self) -> str:
        return f"STTBackendOptions(name={self.name!r}, provider={self.provider!r}, " \
               f"url={self.url!r})"


@dataclass(frozen=True)
class TTSBackendOptions(_Backend):
    """One ``[[tts.backends]]``: the fields of [tts] for one provider."""

    provider: str = "local"
    url: str = ""
    api_key: str = ""
    sample_rate: int = 24_000

    def check(self, where: str) -> None:
        super().check(where)
        check_numbers(self, where, {"sample_rate": (8_000, 48_000)})
        _remote_or_local(where, self.provider, self.url)

    def __repr__(self) -> str:
        return f"TTSBackendOptions(name={self.name!r}, provider={self.provider!r}, " \
               f"url={self.url!r})"


def _check_backends(section: str, provider: str, backends: list[Any]) -> None:
    """Each entry checked, named by its place (``llm.backends[1].model``)."""
    if backends and provider != "local":
        raise ConfigError(f"{section}.backends", f"give the providers either in [{section}] "
                          f"or as [[{section}.backends]], not both")
    names: set[str] = set()
    for i, backend in enumerate(backends):
        backend.check(f"{section}.backends[{i}]")
        if backend.name and backend.name in names:
            raise ConfigError(f"{section}.backends[{i}].name", f"{backend.name!r} is taken")
        names.add(backend.name)


@dataclass(frozen=True)
class LLMOptions:
    provider: str = "local"  # "local" (embedded SmolLM2) or "openai" (any compatible server)
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = ""
    api_key: str = ""
    temperature: float = 0.3
    max_tokens: int = 60
    timeout_s: float = 10.0  # time limit for the first token
    stream_idle_timeout_s: float = 5.0  # ...and for each token after it (a stalled reply)
    # Replace personal data (card, phone and social security numbers, emails, IBANs, long
    # digit runs) in the caller's words before any LLM receives them. Switch it off only
    # where the model runs inside the same trust boundary and needs the raw words.
    redact: bool = True
    # An ordered chain of providers instead of the one above: each that fails is replaced by
    # the next within the turn (rejoinder.providers.fallback). Empty: the one above.
    backends: list[LLMBackendOptions] = field(default_factory=list)
    fallback_to_local: bool = False  # the embedded model as the chain's last resort

    def __post_init__(self) -> None:
        _check_backends("llm", self.provider, self.backends)
        # OpenAI's temperature range; a first token later than 10 minutes never comes.
        check_numbers(self, "llm", {"temperature": (0.0, 2.0), "max_tokens": (1, 100_000),
                                    "timeout_s": (0.0, 600.0)})
        if self.provider not in ("local", "openai"):
            raise ConfigError("llm.provider", f"{self.provider!r} is not 'local' or 'openai'")
        if self.provider == "openai":
            if not self.base_url.startswith(("http://", "https://")):
                raise ConfigError("llm.base_url", "must start with http:// or https://")
            if not self.model:
                raise ConfigError("llm.model", "is required when llm.provider is 'openai'")
        if self.max_tokens < 1:
            raise ConfigError("llm.max_tokens", "must be at least 1")
        if self.timeout_s <= 0:
            raise ConfigError("llm.timeout_s", "must be positive")
        _idle_limit("llm", self.stream_idle_timeout_s)

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return f"LLMOptions(provider={self.provider!r}, base_url={self.base_url!r}, " \
               f"model={self.model!r}, api_key={'***' if self.api_key else ''!r}, " \
               f"redact={self.redact!r})"


@dataclass(frozen=True)
class STTOptions:
    provider: str = "local"  # "local" (Whisper tiny.en) or "remote" (HTTP: POST {url}/v1/stt)
    url: str = ""
    api_key: str = ""
    # remote only: send the audio as it is spoken (WebSocket {url}/v1/stt/stream) and read
    # the caller's interim words ahead; off: the whole utterance is posted at its end.
    streaming: bool = False
    stream_idle_timeout_s: float = 5.0  # the transcript, from when the turn asks for it
    backends: list[STTBackendOptions] = field(default_factory=list)  # as [[llm.backends]]
    fallback_to_local: bool = False

    def __post_init__(self) -> None:
        _check_backends("stt", self.provider, self.backends)
        check_numbers(self, "stt", {})
        _remote_or_local("stt", self.provider, self.url)
        _streaming("stt", self.provider, self.streaming)
        _idle_limit("stt", self.stream_idle_timeout_s)

    def __repr__(self) -> str:
        return f"STTOptions(provider={self.provider!r}, url={self.url!r}, " \
               f"streaming={self.streaming!r})"


@dataclass(frozen=True)
class TTSOptions:
    provider: str = "local"  # "local" (Piper) or "remote" (HTTP: POST {url}/v1/tts)
    url: str = ""
    api_key: str = ""
    sample_rate: int = 24_000  # of the remote service's PCM16 stream
    stream_idle_timeout_s: float = 5.0  # longest wait for the next chunk of audio
    backends: list[TTSBackendOptions] = field(default_factory=list)  # as [[llm.backends]]
    fallback_to_local: bool = False

    def __post_init__(self) -> None:
        _check_backends("tts", self.provider, self.backends)
        check_numbers(self, "tts", {"sample_rate": (8_000, 48_000)})
        _remote_or_local("tts", self.provider, self.url)
        _idle_limit("tts", self.stream_idle_timeout_s)
        if not 8_000 <= self.sample_rate <= 48_000:
            raise ConfigError("tts.sample_rate", "must be between 8000 and 48000")

    def __repr__(self) -> str:
        return f"TTSOptions(provider={self.provider!r}, url={self.url!r})"


def _idle_limit(section: str, seconds: float) -> None:
    # A provider silent for minutes mid-stream is gone; NaN fails this comparison too.
    if not 0 < seconds <= 600:
        raise ConfigError(f"{section}.stream_idle_timeout_s",
                          "must be positive and finite, at most 600 s")


def _remote_or_local(section: str, provider: str, url: str) -> None:
    if provider not in ("local", "remote"):
        raise ConfigError(f"{section}.provider", f"{provider!r} is not 'local' or 'remote'")
    if provider == "remote" and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{section}.url", "a remote provider needs an http(s):// URL")


def _streaming(section: str, provider: str, streaming: bool) -> None:
    if streaming and provider != "remote":
        raise ConfigError(f"{section}.streaming", "applies to provider = 'remote' only (the "
                          "embedded Whisper always transcribes while the caller speaks)")


@dataclass(frozen=True)
class LogOptions:
    level: str = "info"
    json: bool = True

    def __post_init__(self) -> None:
        if self.level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("log.level", f"{self.level!r} is not debug/info/warning/error")


@dataclass(frozen=True)
class StoreOptions:
    """Where call records go (``rejoinder.store``): SQLite by default, PostgreSQL by URL."""

    # A SQLAlchemy URL: "postgresql://user:pass@host/db" or "sqlite:///path/calls.db".
    # Empty: SQLite at ``path``.
    url: str = ""
    # The SQLite file; empty: calls.db in $XDG_DATA_HOME/rejoinder (~/.local/share/rejoinder).
    path: str = ""
    keep_days: float = 30.0  # records older than this are deleted (0: kept for ever)
    prune_interval_s: float = 3600.0
    # Turns waiting to be written (the database slow or down); beyond this, new ones are
    # dropped with a warning.
    queue_max: int = 10_000
    # Replace personal data in the stored transcripts as the LLM saw it (core.redact).
    redact: bool = True

    def __post_init__(self) -> None:
        check_numbers(self, "store", {"keep_days": (0.0, 36_500.0),
                                      "prune_interval_s": (0.0, 7 * 86_400.0),
                                      "queue_max": (1, 10_000_000)})
        if self.url and not self.url.startswith(("sqlite", "postgresql", "postgres:")):
            raise ConfigError("store.url", "must be a sqlite:// or postgresql:// URL")
        if self.url and self.path:
            raise ConfigError("store.path", "give store.url or store.path, not both")
        if self.keep_days < 0:
            raise ConfigError("store.keep_days", "must be 0 (keep for ever) or more")
        if self.prune_interval_s <= 0:
            raise ConfigError("store.prune_interval_s", "must be positive")
        if self.queue_max < 1:
            raise ConfigError("store.queue_max", "must be at least 1")

    def __repr__(self) -> str:  # a PostgreSQL URL may carry a password
        return f"StoreOptions(url={'***' if self.url else ''!r}, path={self.path!r}, " \
               f"keep_days={self.keep_days!r})"


@dataclass(frozen=True)
class TelemetryOptions:
    """OpenTelemetry traces of each turn (``rejoinder.observability.tracing``); off unless
    ``otlp_endpoint`` is set, and then the OpenTelemetry SDK is loaded ([telemetry] extra)."""

    # An OTLP/HTTP traces endpoint, e.g. "http://127.0.0.1:4318/v1/traces". Empty: off.
    otlp_endpoint: str = ""
    service_name: str = "rejoinder"
    # Transcripts on the turn spans, under rejoinder.pii.* keys. Personal data: off unless
    # the trace backend may hold what callers say.
    pii: bool = False

    def __post_init__(self) -> None:
        if self.otlp_endpoint and not self.otlp_endpoint.startswith(("http://", "https://")):
            raise ConfigError("telemetry.otlp_endpoint", "must be an http(s):// URL")
        if not self.service_name:
            raise ConfigError("telemetry.service_name", "must not be empty")


@dataclass(frozen=True)
class AnalyticsOptions:
    """Post-call analytics (``rejoinder.analytics``): after a call ends, a background job
    extracts a summary, intent, sentiment, lead score, escalation flag and slots from its
    stored (redacted) transcript with the configured LLM."""

    # On by default: what a call was about is what an operator looks for first. With the
    # embedded model it runs on its own model instance, one thread at the lowest CPU
    # priority (nice 19), so live calls win the cores; it never runs during a call it reads.
    enabled: bool = True
    max_concurrent: int = 1  # jobs at once (the embedded model: that many slots)
    max_attempts: int = 3  # a job that failed this often is marked failed
    retry_backoff_s: float = 30.0  # the pause after a failed attempt; doubles each time
    threads: int = 1  # CPU threads of the embedded model's analytics instance
    # Extra fields this agent wants: "name" (a string), "name:boolean", "name:integer",
    # or "name:a|b|c" (one of the words); each null when the call does not say.
    fields: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_numbers(self, "analytics", {
            "max_concurrent": (1, 16), "max_attempts": (1, 20),
            "retry_backoff_s": (0.0, 86_400.0), "threads": (1, 64)})
        from rejoinder.analytics.fields import parse_fields

        try:
            parse_fields(self.fields)
        except ValueError as exc:
            raise ConfigError("analytics.fields", str(exc)) from None


@dataclass(frozen=True)
class ReviewOptions:
    """The weekly review's thresholds (``rejoinder.store.review``; the dashboard)."""

    days: float = 7.0  # the default range, ending now
    v2v_p95_ms: float = 500.0  # p95 voice-to-voice at most this
    phrase_cache_min: float = 0.30  # share of replies whose first clause came from the cache
    llm_prefix_reuse_min: float = 0.75  # share of prompt tokens reused from the prefix cache
    restart_max: float = 0.03  # cancel-and-restart: below this share of speculative turns
    barge_in_stop_ms: float = 200.0  # caller speech over the agent to its audio stopping
    tool_timeouts_max: int = 0
    cold_start_tax_ms: float = 50.0  # first-turn p95 at most this over the later turns' p95

    def __post_init__(self) -> None:
        check_numbers(self, "review", {
            "days": (0.01, 3660.0), "v2v_p95_ms": (1.0, 60_000.0),
            "phrase_cache_min": (0.0, 1.0), "llm_prefix_reuse_min": (0.0, 1.0),
            "restart_max": (0.0, 1.0), "barge_in_stop_ms": (1.0, 60_000.0),
            "tool_timeouts_max": (0, 1_000_000), "cold_start_tax_ms": (0.0, 60_000.0)})


@dataclass(frozen=True)
class TelephonyOptions:
    """Phone calls through Twilio Media Streams (``/twilio/voice``, ``/twilio/media``)."""

    # How Twilio reaches this server, e.g. "https://voice.example.org": the stream URL in
    # the TwiML (wss:// from https://) and the URL Twilio signs. Required with an auth token.
    public_url: str = ""
    # The Twilio account's auth token (REJOINDER_TELEPHONY__TWILIO_AUTH_TOKEN): every
    # webhook and stream must carry its X-Twilio-Signature. Empty: the phone routes are off.
    twilio_auth_token: str = ""
    # Local testing without Twilio: phone calls without an auth token, nothing signed.
    allow_unsigned: bool = False
    # The one-time token the TwiML gives a call's stream is good for this long.
    stream_token_ttl_s: float = 30.0

    def __post_init__(self) -> None:
        check_numbers(self, "telephony", {"stream_token_ttl_s": (1.0, 600.0)})
        if self.public_url:
            parsed = urlsplit(self.public_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname \
                    or parsed.query or parsed.fragment:
                raise ConfigError("telephony.public_url",
                                  "must be an http:// or https:// URL like https://example.org")
        elif self.twilio_auth_token:
            raise ConfigError("telephony.public_url",
                              "is required with telephony.twilio_auth_token (Twilio signs it)")
        if self.twilio_auth_token != self.twilio_auth_token.strip():
            raise ConfigError("telephony.twilio_auth_token", "must not have surrounding spaces")

    @property
    def enabled(self) -> bool:
        return bool(self.twilio_auth_token) or self.allow_unsigned

    def __repr__(self) -> str:  # keep the auth token out of logs and tracebacks
        return f"TelephonyOptions(public_url={self.public_url!r}, twilio_auth_token=" \
               f"{'***' if self.twilio_auth_token else ''!r}, " \
               f"allow_unsigned={self.allow_unsigned!r})"


@dataclass(frozen=True)
class BusOptions:
    """Workers dispatched over NATS (``rejoinder serve --workers N``, ``rejoinder worker``,
    ``rejoinder gateway``: rejoinder.cluster). Unused by a single-process server."""

    # nats://host:port of the NATS server (with JetStream). Empty: ``serve --workers N``
    # starts a local nats-server of its own; ``worker`` and ``gateway`` need one.
    url: str = ""
    # How often a worker publishes its load, and how long without one takes it out of
    # rotation.
    heartbeat_s: float = 0.5
    stale_s: float = 1.5
    # This worker's own base URL as callers reach it (Twilio media streams go there).
    # Empty: http://<server.host>:<server.port>.
    worker_url: str = ""
    # Where the local nats-server keeps its JetStream files. Empty: "jetstream" next to
    # the SQLite call store (the data directory).
    jetstream_dir: str = ""
    # Workers started by ``serve --workers N`` listen from this port up (0: free ports).
    worker_port: int = 0

    def __post_init__(self) -> None:
        check_numbers(self, "bus", {"heartbeat_s": (0.05, 60.0), "stale_s": (0.1, 600.0),
                                    "worker_port": (0, 65535)})
        if self.url and not self.url.startswith(("nats://", "tls://")):
            raise ConfigError("bus.url", "must be a nats:// or tls:// URL")
        if self.stale_s <= self.heartbeat_s:
            raise ConfigError("bus.stale_s", "must be longer than bus.heartbeat_s")
        if self.worker_url and not self.worker_url.startswith(("http://", "https://")):
            raise ConfigError("bus.worker_url", "must be an http:// or https:// URL")


@dataclass(frozen=True)
class Config:
    server: ServerOptions = field(default_factory=ServerOptions)
    agent: AgentOptions = field(default_factory=AgentOptions)
    turn: TurnOptions = field(default_factory=TurnOptions)
    stt: STTOptions = field(default_factory=STTOptions)
    llm: LLMOptions = field(default_factory=LLMOptions)
    tts: TTSOptions = field(default_factory=TTSOptions)
    log: LogOptions = field(default_factory=LogOptions)
    store: StoreOptions = field(default_factory=StoreOptions)
    telemetry: TelemetryOptions = field(default_factory=TelemetryOptions)
    analytics: AnalyticsOptions = field(default_factory=AnalyticsOptions)
    review: ReviewOptions = field(default_factory=ReviewOptions)
    telephony: TelephonyOptions = field(default_factory=TelephonyOptions)
    guardrails: GuardrailOptions = field(default_factory=GuardrailOptions)
    bus: BusOptions = field(default_factory=BusOptions)


def load_config(path: str | Path | None = None,
                env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (TOML) if given, apply environment overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError("(file)", f"{path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("(file)", f"{path} is not valid TOML: {exc}") from exc
    env = os.environ if env is None else env
    known = _settings()
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        setting = key[len(ENV_PREFIX):].lower()
        if setting not in known:
            _unknown_variable(key, setting, known)
            continue
        section, _, name = setting.partition("__")
        raw.setdefault(section, {})[name] = _EnvValue(value)
    config: Config = _build(Config, raw, "")
    return config


def _settings() -> list[str]:
    """Every setting as its environment variable spells it, less the prefix, lower case:
    "server__max_calls"."""
    return [f"{section}__{f.name}"
            for section, hint in typing.get_type_hints(Config).items()
            for f in dataclasses.fields(hint)]


def _unknown_variable(key: str, setting: str, known: list[str]) -> None:
    """A ``REJOINDER_`` variable that is no setting. One that has the section separator
    ("__") is a setting misspelt: an error, as in the file. One without is warned about
    (other tools may own such names) and ignored; both name the likely intended one."""
    flat = {name.replace("__", "_"): name for name in known}
    guess = flat.get(setting) or next(iter(
        difflib.get_close_matches(setting, known, n=1, cutoff=0.75)), None)
    hint = f"; did you mean {ENV_PREFIX}{guess.upper()}?" if guess else ""
    if "__" in setting:
        raise ConfigError(setting.replace("__", ".", 1),
                          f"unknown setting, from the environment variable {key}{hint}")
    log.warning("environment variable %s is not a setting and is ignored "
                "(settings are %s<SECTION>__<FIELD>)%s", key, ENV_PREFIX, hint)


class _EnvValue(str):
    """A string from the environment, converted to the field's type when built."""


def _build(cls: type[Any], raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix.rstrip(".") or "(file)", "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(name, f"unknown field (known: {', '.join(sorted(fields))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{name}.")  # type: ignore[arg-type]
        else:
            kwargs[key] = _convert(value, hint, name)
    return cls(**kwargs)


def _convert(value: Any, hint: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):  # a table in a list ([[agent.mcp_servers]])
        return _build(hint, value, f"{name}.")  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin is dict and not isinstance(value, Mapping):
        raise ConfigError(name, f"expected a table, got {type(value).__name__}")
    if origin in (list, tuple, typing.List):  # noqa: UP006
        if isinstance(value, _EnvValue):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(name, f"expected a list, got {type(value).__name__}")
        item = typing.get_args(hint)[0]
        items = [_convert(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    try:
        if hint is bool:
            if isinstance(value, _EnvValue):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):  # "nan" and "inf" parse, and pass range checks
                raise ConfigError(name, f"must be a finite number, not {value}")
            return number
        if hint is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return str(value)
    except (ValueError, TypeError):  # TypeError: a list, table or date where a number goes
        raise ConfigError(name, f"expected {hint.__name__}, got {value!r}") from None
    return value
