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
    [bus]      url, worker_url, heartbeat_s, stale_s, ...

The sections' options live in ``agent``, ``providers`` and ``service`` (this package's
modules), ``turn.options`` and ``guardrails.options``; all are importable from here.
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

from rejoinder.config.agent import (
    DEFAULT_SYSTEM_PROMPT,
    AgentOptions,
    McpServerOptions,
    WebhookToolOptions,
)
from rejoinder.config.providers import (
    LLMBackendOptions,
    LLMOptions,
    STTBackendOptions,
    STTOptions,
    TTSBackendOptions,
    TTSOptions,
)
from rejoinder.config.service import (
    AnalyticsOptions,
    BusOptions,
    LogOptions,
    ReviewOptions,
    ServerOptions,
    StoreOptions,
    TelemetryOptions,
    TelephonyOptions,
)
from rejoinder.core.errors import ConfigError
from rejoinder.guardrails.options import GuardrailOptions
from rejoinder.turn.options import TurnOptions

__all__ = [
    "DEFAULT_SYSTEM_PROMPT", "ENV_PREFIX", "AgentOptions", "AnalyticsOptions", "BusOptions",
    "Config", "GuardrailOptions", "LLMBackendOptions", "LLMOptions", "LogOptions",
    "McpServerOptions", "ReviewOptions", "STTBackendOptions", "STTOptions", "ServerOptions",
    "StoreOptions", "TTSBackendOptions", "TTSOptions", "TelemetryOptions", "TelephonyOptions",
    "TurnOptions", "WebhookToolOptions", "load_config",
]

ENV_PREFIX = "REJOINDER_"

log = logging.getLogger(__name__)


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
