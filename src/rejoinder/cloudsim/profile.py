"""Latency profiles of the simulated cloud: one frozen dataclass per service, loaded from TOML.

    seed = 0                      # failure draws and jitter are deterministic given the seed
    [stt]  final_s, jitter_s, partial_interval_s, partial_lag_s, words_per_s, transcript,
           timeout_rate, drop_rate
    [llm]  ttft_s, tokens_per_s, jitter_s, reply, tool_calls, timeout_rate, drop_rate
    [tts]  ttfb_s, rtf, jitter_s, sample_rate, seconds_per_word, chunk_s, timeout_rate, drop_rate

Every bad value raises :class:`ConfigError` naming the field (``llm.ttft_s``). Shipped profiles
live in ``profiles/``; :func:`load_profile` takes one's name or a path to any TOML file.
Each field can also be overridden by a command-line flag (see :func:`override_flags`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from rejoinder.core.errors import ConfigError

DEFAULT_REPLY = "Sure, I can help with that. Let me check the details for you now."
SECTIONS = ("stt", "llm", "tts")


@dataclass(frozen=True)
class ServiceProfile:
    """What every simulated service shares: injected failures, drawn per request."""

    section: ClassVar[str] = "service"

    timeout_rate: float = 0.0  # share of requests never answered (the client has to give up)
    drop_rate: float = 0.0     # share of responses cut midway (connection closed)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(self._name(f.name), "must be a number, not NaN")
        for name in ("timeout_rate", "drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(self._name(name), "must be between 0 and 1")
        if self.timeout_rate + self.drop_rate > 1.0:
            raise ConfigError(self._name("drop_rate"), "timeout_rate + drop_rate exceeds 1")

    def _name(self, field_name: str) -> str:
        return f"{self.section}.{field_name}"

    def _require(self, field_name: str, ok: bool, problem: str) -> None:
        if not ok:
            raise ConfigError(self._name(field_name), problem)


@dataclass(frozen=True)
class STTProfile(ServiceProfile):
    section: ClassVar[str] = "stt"

    final_s: float = 0.15   # from the end of the uploaded audio (or a finalize) to the transcript
    jitter_s: float = 0.0   # uniform 0..jitter added to the wait
    # The streaming endpoint's interim transcripts: one every partial_interval_s while the
    # socket is open (when its text changed), covering the audio received up to
    # partial_lag_s before it. Defaults: a cloud recogniser's look-ahead and round trip
    # (vendors quote 0.2-0.5 s for their interim words), and Deepgram's pace of about one
    # interim a second of audio, faster services' 0.2-0.3 s between the two.
    partial_interval_s: float = 0.5
    partial_lag_s: float = 0.3
    # How fast a known transcript (X-Transcript, ``transcript`` below) grows in the
    # partials: words per second of audio (2.5: 150 words a minute, conversational pace).
    words_per_s: float = 2.5
    # The words of every utterance when the request names none; empty: "utterance of 2.3
    # seconds" (whose figures the read-ahead never sends: it stops before a number).
    transcript: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("final_s", "jitter_s", "partial_lag_s"):
            self._require(name, 0.0 <= getattr(self, name) < math.inf,
                          "must be >= 0 and finite")
        self._require("partial_interval_s", 0.01 <= self.partial_interval_s <= 60.0,
                      "must be in [0.01, 60]")
        self._require("words_per_s", 0.0 < self.words_per_s <= 20.0, "must be in (0, 20]")


@dataclass(frozen=True)
class LLMProfile(ServiceProfile):
    section: ClassVar[str] = "llm"

    ttft_s: float = 0.25        # from the request to the first token
    tokens_per_s: float = 50.0  # one token (word) every 1/tokens_per_s after it; inf: at once
    jitter_s: float = 0.0       # uniform 0..jitter added to every wait
    reply: str = DEFAULT_REPLY  # the canned answer to every request
    # Tool calls to make, in order, as JSON, e.g. [{"name": "find_slots", "arguments":
    # {"day": "monday"}}, null]: a request that ends with the caller's words and offers the
    # tool gets the entry after the latest call in its history (the first when there is
    # none), streamed like tokens; null or the end of the list: no call (a null ends the
    # script: nothing after it is reached). A request after a
    # tool result gets ``reply``. "{key}" in an argument is that key's value in the latest
    # tool result that has one ("{reference}"). Empty: never a tool call.
    tool_calls: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("ttft_s", 0.0 <= self.ttft_s < math.inf, "must be >= 0 and finite")
        self._require("tokens_per_s", self.tokens_per_s > 0.0, "must be positive (inf allowed)")
        self._require("jitter_s", 0.0 <= self.jitter_s < math.inf, "must be >= 0 and finite")
        self._require("reply", bool(self.reply.split()), "must contain at least one word")
        self.calls()  # valid JSON of the right shape

    def calls(self) -> list[tuple[str, str] | None]:
        """``tool_calls`` as (name, arguments as JSON text) per caller turn."""
        if not self.tool_calls.strip():
            return []
        problem = ('must be a JSON list of null or {"name": "...", "arguments": {...}}')
        try:
            raw = json.loads(self.tool_calls)
        except ValueError:
            raise ConfigError(self._name("tool_calls"), problem) from None
        self._require("tool_calls", isinstance(raw, list), problem)
        out: list[tuple[str, str] | None] = []
        for entry in raw:
            if entry is None:
                out.append(None)
                continue
            ok = isinstance(entry, dict) and isinstance(entry.get("name"), str) \
                and isinstance(entry.get("arguments", {}), dict)
            self._require("tool_calls", ok, problem)
            out.append((entry["name"], json.dumps(entry.get("arguments", {}))))
        return out

    @property
    def token_interval_s(self) -> float:
        return 1.0 / self.tokens_per_s


@dataclass(frozen=True)
class TTSProfile(ServiceProfile):
    section: ClassVar[str] = "tts"

    ttfb_s: float = 0.1              # from the request to the first audio chunk
    rtf: float = 0.2                 # a chunk of d seconds of audio takes d * rtf to render
    jitter_s: float = 0.0            # uniform 0..jitter added to every wait
    sample_rate: int = 24_000
    seconds_per_word: float = 0.3    # how long the audio of a text is
    chunk_s: float = 0.1             # audio per streamed chunk

    def __post_init__(self) -> None:
        super().__post_init__()
        self._require("ttfb_s", 0.0 <= self.ttfb_s < math.inf, "must be >= 0 and finite")
        self._require("rtf", 0.0 <= self.rtf < math.inf, "must be >= 0 and finite")
        self._require("jitter_s", 0.0 <= self.jitter_s < math.inf, "must be >= 0 and finite")
        self._require("sample_rate", 8_000 <= self.sample_rate <= 48_000,
                      "must be between 8000 and 48000")
        self._require("seconds_per_word", 0.0 < self.seconds_per_word <= 10.0,
                      "must be in (0, 10]")
        self._require("chunk_s", 0.005 <= self.chunk_s <= 5.0, "must be in [0.005, 5]")


@dataclass(frozen=True)
class Profile:
    """The latency and failures of the three simulated services."""

    stt: STTProfile = field(default_factory=STTProfile)
    llm: LLMProfile = field(default_factory=LLMProfile)
    tts: TTSProfile = field(default_factory=TTSProfile)
    seed: int = 0

    def with_overrides(self, overrides: Mapping[str, object]) -> Profile:
        """A copy with ``{"llm.ttft_s": 0.3, "seed": 1, ...}`` applied and validated."""
        sections: dict[str, dict[str, object]] = {}
        top: dict[str, object] = {}
        for key, value in overrides.items():
            section, dot, name = key.partition(".")
            if dot:
                sections.setdefault(section, {})[name] = value
            else:
                top[key] = value
        raw: dict[str, object] = {**top, **sections}
        changes = _build_fields(Profile, raw, "")
        for section in SECTIONS:
            if section in changes:
                changes[section] = dataclasses.replace(getattr(self, section), **changes[section])
        return dataclasses.replace(self, **changes)


def shipped_profiles() -> list[str]:
    """Names of the profiles that ship with the package."""
    folder = resources.files("rejoinder.cloudsim") / "profiles"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name ("cloud-typical", "fast") or any TOML file by path."""
    text = None
    if isinstance(name_or_path, str) and name_or_path in shipped_profiles():
        shipped = resources.files("rejoinder.cloudsim") / "profiles" / f"{name_or_path}.toml"
        text = shipped.read_text()
    else:
        path = Path(name_or_path)
        try:
            text = path.read_text()
        except OSError:
            raise ConfigError("(profile)", f"{str(name_or_path)!r} is neither a shipped profile "
                              f"({', '.join(shipped_profiles())}) nor a readable file") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(profile)", f"{name_or_path} is not valid TOML: {exc}") from exc
    return profile_from_mapping(raw)


def profile_from_mapping(raw: Mapping[str, Any]) -> Profile:
    """Build and validate a profile from parsed TOML (missing fields take the defaults)."""
    kwargs = _build_fields(Profile, raw, "")
    for section in SECTIONS:
        if section in kwargs:
            kwargs[section] = _section_class(section)(**kwargs[section])
    return Profile(**kwargs)


@dataclass(frozen=True)
class Flag:
    """A command-line override of one profile field."""

    flag: str      # "--llm-ttft"
    dest: str      # "llm_ttft" (also the keyword accepted by ``start_cloudsim``)
    field: str     # "llm.ttft_s"
    kind: type[Any]
    help: str

    def parse(self, value: object) -> object:
        """``value`` for the field: typed already, or text as written on the command line."""
        if isinstance(value, str) and self.kind is not str:
            try:
                return self.kind(value)
            except ValueError:
                raise ConfigError(self.field, f"expected {self.kind.__name__}, "
                                              f"got {value!r}") from None
        return value


def override_flags() -> dict[str, Flag]:
    """Every overridable field by ``dest``: ``--{section}-{field}``, seconds' ``_s`` dropped
    (``--stt-final``, ``--llm-ttft``, ``--llm-tokens-per-s``, ``--tts-rtf``), and ``--seed``."""
    flags = {"seed": Flag("--seed", "seed", "seed", int, "seed of failure draws and jitter")}
    for section in SECTIONS:
        cls = _section_class(section)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            word = f.name
            if word.endswith("_s") and not word.endswith("_per_s"):
                word = word[:-2]
            dest = f"{section}_{word}"
            flags[dest] = Flag("--" + dest.replace("_", "-"), dest, f"{section}.{f.name}",
                               hints[f.name], f"override {section}.{f.name}")
    return flags


def _section_class(section: str) -> type[ServiceProfile]:
    classes: dict[str, type[ServiceProfile]] = {
        "stt": STTProfile, "llm": LLMProfile, "tts": TTSProfile}
    return classes[section]


def _build_fields(cls: type[Any], raw: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Type-checked keyword arguments for ``cls`` (sections as nested dicts)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix.rstrip(".") or "(profile)", "must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(name, f"unknown field (known: {', '.join(sorted(known))})")
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out[key] = _build_fields(hint, value, f"{name}.")
        else:
            out[key] = _convert(value, hint, name)
    return out


def _convert(value: object, hint: type[Any], name: str) -> object:
    ok = False
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value  # type: ignore[arg-type]
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(name, f"expected {hint.__name__}, got {value!r}")
    return value
