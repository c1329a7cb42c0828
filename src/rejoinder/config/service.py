"""How the server runs: [server], [log], [store], [telemetry], [analytics], [review],
[telephony], [bus]."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from rejoinder.core.bounds import check_numbers
from rejoinder.core.errors import ConfigError
from rejoinder.core.netloc import split_host, split_origin


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
