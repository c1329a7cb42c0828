"""Conversation scripts for simulated callers: data files, not code.

A script is a TOML file (shipped ones live in ``bench/scripts/``)::

    name = "librivox"
    lead_s = 1.0                    # silence before the first turn (the call settles)

    [[turn]]
    say = "librivox:0880"           # what the caller says (sources below)

    [[turn]]
    say = "espeak:Can you book a table for two tomorrow evening?"
    pause = { after_s = 1.2, len_s = 0.55 }   # a mid-sentence pause spliced in
    gap_s = 1.0                     # silence after the agent's reply before speaking

    [[turn]]
    say = "pocketsphinx:goforward"
    interrupt_after_s = 0.8         # speak 0.8 s after the agent started replying
                                    # to the previous turn (a barge-in)

    [[turn]]
    say = "espeak:mm hmm"
    interrupt_after_s = 0.6
    backchannel = true              # a listening noise: the agent should keep its turn

    [server]                        # settings of the server the bench starts, as its
    agent.profile = "booking"       # environment overrides (REJOINDER_AGENT__PROFILE)

    [cloud]                         # simulated cloud profile values for this script
    llm.tool_calls = '[{"name": "find_slots", "arguments": {"day": "monday"}}]'
                                    # (--cloud on the command line still wins)

Sources: ``librivox:<id>`` (Debian pocketsphinx-testdata LibriVox sentences, e.g.
0880), ``pocketsphinx:<name>`` (its raw recordings: goforward, numbers, something),
``espeak:<text>`` (synthesised with espeak-ng), ``tone:<seconds>`` (a 220 Hz tone,
for energy-VAD fakes), ``silence:<seconds>``.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from rejoinder.core.audio import PCM, SAMPLE_RATE, read_wav
from rejoinder.core.errors import ConfigError

TESTDATA = Path("/usr/share/pocketsphinx/test/data")


@dataclass(frozen=True)
class Turn:
    say: str
    audio: PCM                       # 16 kHz mono int16, pauses spliced in
    gap_s: float = 1.0
    interrupt_after_s: float | None = None
    pause_at_s: float | None = None  # where a spliced pause starts, if any
    pause_s: float = 0.0
    backchannel: bool = False        # said over the agent; no reply expected


@dataclass(frozen=True)
class Script:
    name: str
    turns: tuple[Turn, ...]
    lead_s: float = 1.0
    server: tuple[tuple[str, str], ...] = ()  # ("REJOINDER_AGENT__PROFILE", "booking"), ...
    cloud: tuple[tuple[str, str | float | int], ...] = ()  # ("llm.tool_calls", "[...]"), ...

    @property
    def speech_s(self) -> float:
        return sum(len(t.audio) for t in self.turns) / SAMPLE_RATE


def shipped() -> list[str]:
    folder = resources.files("rejoinder.bench") / "scripts"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def load_script(name_or_path: str) -> Script:
    """A shipped script by name (``librivox``) or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        candidate = resources.files("rejoinder.bench") / "scripts" / f"{name_or_path}.toml"
        if not candidate.is_file():
            raise ConfigError("script", f"no script {name_or_path!r} (shipped: {shipped()})")
        text = candidate.read_text()
    else:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError("script", f"cannot read {path}: {exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("script", f"{name_or_path} is not valid TOML: {exc}") from exc
    return _parse(raw, path.stem)


def _parse(raw: dict[str, object], default_name: str) -> Script:
    turns_raw = raw.get("turn")
    if not isinstance(turns_raw, list) or not turns_raw:
        raise ConfigError("turn", "a script needs at least one [[turn]]")
    turns = []
    for i, t in enumerate(turns_raw):
        where = f"turn[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("say"), str):
            raise ConfigError(f"{where}.say", "each turn needs a 'say' string")
        audio = source_audio(t["say"], where)
        pause = t.get("pause")
        pause_at = pause_s = None
        if pause is not None:
            if not isinstance(pause, dict):
                raise ConfigError(f"{where}.pause", "must be a table {after_s, len_s}")
            pause_at, pause_s = float(pause["after_s"]), float(pause["len_s"])
            audio = splice_pause(audio, pause_at, pause_s)
        interrupt = t.get("interrupt_after_s")
        if interrupt is not None and i == 0:
            raise ConfigError(f"{where}.interrupt_after_s",
                              "the first turn has nothing to interrupt")
        backchannel = bool(t.get("backchannel", False))
        if backchannel and interrupt is None:
            raise ConfigError(f"{where}.backchannel", "needs interrupt_after_s (when to say it)")
        turns.append(Turn(
            say=t["say"], audio=audio, gap_s=float(t.get("gap_s", 1.0)),
            interrupt_after_s=None if interrupt is None else float(interrupt),
            pause_at_s=pause_at, pause_s=pause_s or 0.0, backchannel=backchannel))
    return Script(name=str(raw.get("name", default_name)), turns=tuple(turns),
                  lead_s=float(raw.get("lead_s", 1.0)),  # type: ignore[arg-type]
                  server=_server_settings(raw.get("server", {})),
                  cloud=_cloud_settings(raw.get("cloud", {})))


def _server_settings(raw: object) -> tuple[tuple[str, str], ...]:
    """``[server]``'s ``section.field = value`` as environment overrides of the server."""
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError("server", "must be a table of section.field = value")
    out = []
    for section, fields in raw.items():
        for name, value in fields.items():
            if isinstance(value, dict | list):
                raise ConfigError(f"server.{section}.{name}", "must be a single value")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            out.append((f"REJOINDER_{section.upper()}__{name.upper()}", text))
    return tuple(out)


def _cloud_settings(raw: object) -> tuple[tuple[str, str | float | int], ...]:
    """``[cloud]``'s ``section.field = value`` (checked when the simulator starts)."""
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError("cloud", "must be a table of section.field = value")
    out: list[tuple[str, str | float | int]] = []
    for section, fields in raw.items():
        for name, value in fields.items():
            if not isinstance(value, str | float | int) or isinstance(value, bool):
                raise ConfigError(f"cloud.{section}.{name}", "must be a number or a string")
            out.append((f"{section}.{name}", value))
    return tuple(out)


def source_audio(spec: str, where: str = "say") -> PCM:
    kind, _, arg = spec.partition(":")
    if kind == "librivox":
        return read_wav(TESTDATA / "librivox" / f"sense_and_sensibility_01_austen_64kb-{arg}.wav")
    if kind == "pocketsphinx":
        return np.fromfile(TESTDATA / f"{arg}.raw", dtype="<i2").astype(np.int16)
    if kind == "espeak":
        return _espeak(arg)
    if kind == "tone":
        from rejoinder.testing.loopback import tone

        return tone(float(arg))
    if kind == "silence":
        return np.zeros(round(float(arg) * SAMPLE_RATE), dtype=np.int16)
    raise ConfigError(where, f"unknown audio source {spec!r}")


def splice_pause(audio: PCM, after_s: float, len_s: float) -> PCM:
    """Insert ``len_s`` of silence at ``after_s`` (moved to the nearest quiet 10 ms)."""
    cut = round(after_s * SAMPLE_RATE)
    win = SAMPLE_RATE // 100
    lo, hi = max(0, cut - 20 * win), min(len(audio) - win, cut + 20 * win)
    if hi > lo:
        energies = [(float(np.mean(np.square(audio[i:i + win].astype(np.float32)))), i)
                    for i in range(lo, hi, win)]
        cut = min(energies)[1]
    gap = np.zeros(round(len_s * SAMPLE_RATE), dtype=np.int16)
    return np.concatenate((audio[:cut], gap, audio[cut:]))


def _espeak(text: str) -> PCM:
    cache = Path(tempfile.gettempdir()) / "rejoinder-espeak"
    cache.mkdir(exist_ok=True)
    path = cache / (hashlib.sha1(text.encode()).hexdigest()[:16] + ".wav")
    if not path.exists():
        tmp = path.with_suffix(".tmp.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(tmp), text],
                       check=True, capture_output=True)
        tmp.rename(path)
    return read_wav(path)
