"""The project's error types. Vendor errors are translated into these at the boundary.

    RejoinderError
    ├── ConfigError          a bad configuration value; the message names the field
    ├── MissingExtraError    an optional dependency is not installed; names the extra
    ├── SignalingError       a refused signaling request (HTTP 4xx, with a code)
    ├── OverloadedError      the server refuses a call it cannot serve well (HTTP 503)
    └── ProviderError        a provider failed
        ├── ProviderTimeout  it did not answer in time, or its stream stalled (retryable)
        ├── ProviderUnavailable  it cannot be reached, or says it cannot serve now (retryable)
        └── ProviderStreamError  the stream broke midway
"""

from __future__ import annotations


class RejoinderError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(RejoinderError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"config field {field!r}: {problem}")
        self.field = field
        self.problem = problem


class MissingExtraError(RejoinderError):
    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed; install the extra with: pip install 'rejoinder[{extra}]'"
        )


class SignalingError(RejoinderError):
    """A signaling request the server refuses: a malformed or unusable offer, a refused
    origin or host, a body that is not JSON.

    ``message`` and ``code`` are what the caller sees: short, stable, and free of
    internal detail. ``detail`` (what the parser or aiortc said) only goes to the log.
    """

    def __init__(self, code: str, message: str, *, status: int = 400, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.detail = detail


class OverloadedError(RejoinderError):
    """No capacity for another call right now (HTTP 503). ``code`` says which limit."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProviderError(RejoinderError):
    """``kind``: which provider ("stt", "llm", "tts", "turn"; set by the provider base
    classes); ``failure``: "failed", "timeout" or "unavailable". The message is for logs
    only: it may name internal URLs and vendor exceptions."""

    retryable = False
    kind = "provider"
    failure = "failed"

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider


class ProviderTimeout(ProviderError):
    retryable = True
    failure = "timeout"


class ProviderUnavailable(ProviderError):
    retryable = True
    failure = "unavailable"


class ProviderStreamError(ProviderError):
    retryable = True


def error_code(exc: BaseException) -> str:
    """A short code for ``exc`` that carries none of its text: the provider's kind and
    the failure's class ("llm_timeout", "stt_unavailable", "tts_failed"), or "internal"
    for anything not a provider's."""
    if isinstance(exc, ProviderError):
        return f"{exc.kind}_{exc.failure}"
    return "internal"
