"""The providers: [stt], [llm], [tts], each one provider or an ordered list of backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rejoinder.core.bounds import check_numbers
from rejoinder.core.errors import ConfigError


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
    # The embedded model's CPU priority (nice, 0-19) for its native threads: at 10 the
    # speech models win the cores on a machine of its own; where other programs keep the
    # cores busy, 10 starves the model (seconds to a first token): set it lower there.
    nice: int = 10

    def __post_init__(self) -> None:
        _check_backends("llm", self.provider, self.backends)
        # OpenAI's temperature range; a first token later than 10 minutes never comes.
        check_numbers(self, "llm", {"temperature": (0.0, 2.0), "max_tokens": (1, 100_000),
                                    "timeout_s": (0.0, 600.0), "nice": (0, 19)})
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
