from __future__ import annotations

import dataclasses
import logging
import math
import typing

import pytest

from rejoinder.config import Config, LLMOptions, ServerOptions, load_config
from rejoinder.core.errors import ConfigError
from rejoinder.turn.options import TurnOptions


def _write(tmp_path, text):
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_file_and_environment_overrides(tmp_path):
    path = _write(tmp_path, '[server]\nport = 9000\n[llm]\nprovider = "openai"\n'
                            'model = "m"\n[agent]\ngreeting = "Hi."\n')
    env = {"REJOINDER_LLM__BASE_URL": "https://llm.internal/v1",
           "REJOINDER_SERVER__ICE_SERVERS": "stun:a:3478, turn:b",
           "REJOINDER_TURN__END_SILENCE_S": "0.25", "REJOINDER_LOG__JSON": "false"}
    c = load_config(path, env)
    assert c.server.port == 9000
    assert c.server.ice_servers == ["stun:a:3478", "turn:b"]
    assert c.llm.base_url == "https://llm.internal/v1" and c.llm.model == "m"
    assert c.turn.end_silence_s == 0.25
    assert c.log.json is False
    assert c.agent.greeting == "Hi."


def test_api_key_is_not_in_the_repr():
    c = load_config(None, {"REJOINDER_LLM__API_KEY": "sk-secret"})
    assert c.llm.api_key == "sk-secret"
    assert "sk-secret" not in repr(c)


@pytest.mark.parametrize("text, env, field, words", [
    ('[server]\nport = "eighty"\n', {}, "server.port", "expected int"),
    ('[server]\nprot = 1\n', {}, "server.prot", "unknown field"),
    ('[llm]\nprovider = "openai"\n', {}, "llm.model", "required"),
    ('[llm]\nprovider = "magic"\n', {}, "llm.provider", "not 'local' or 'openai'"),
    ('', {"REJOINDER_TURN__VAD_THRESHOLD": "2"}, "turn.vad_threshold", "between 0 and 1"),
    ('', {"REJOINDER_SERVER__ICE_SERVERS": "http://x"}, "server.ice_servers", "stun:/turn:"),
    ('[server\n', {}, "(file)", "not valid TOML"),
    ('server = 3\n', {}, "server", "must be a table"),
])
def test_bad_values_name_the_field(tmp_path, text, env, field, words):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), env)
    assert info.value.field == field
    assert words in str(info.value)


# -- every numeric field: finite, and within a range that names the field ------------------
def _numeric_fields() -> list[tuple[str, str, type]]:
    out = []
    for section, cls in typing.get_type_hints(Config).items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float):
                out.append((section, f.name, hints[f.name]))
    return out


NUMERIC = _numeric_fields()


def test_the_table_covers_every_section_with_numbers():
    assert {s for s, _, _ in NUMERIC} >= {"server", "turn", "llm", "tts", "store"}
    assert ("llm", "temperature", float) in NUMERIC and ("turn", "pause_s", float) in NUMERIC
    assert len(NUMERIC) >= 30


def _bad_values(section: str, name: str, kind: type) -> list[tuple[str, str]]:
    """(TOML literal, environment value) pairs that must all be refused."""
    default = getattr(getattr(Config(), section), name)
    big = "1_000_000_000" if kind is int else "1e9"
    values = [("nan", "nan"), ("inf", "inf"), ("-inf", "-inf"), (big, big.replace("_", "")),
              (f"-{big}", f"-{big.replace('_', '')}")]
    if default >= 0:  # a field whose values are never negative
        values.append(("-1", "-1"))
    return values


@pytest.mark.parametrize("section, name, kind", NUMERIC, ids=[f"{s}.{n}" for s, n, _ in NUMERIC])
def test_every_numeric_field_refuses_non_finite_negative_and_absurd_values(
        tmp_path, section, name, kind):
    for literal, env_value in _bad_values(section, name, kind):
        with pytest.raises(ConfigError) as info:
            load_config(_write(tmp_path, f"[{section}]\n{name} = {literal}\n"), {})
        assert info.value.field == f"{section}.{name}", literal
        variable = f"REJOINDER_{section.upper()}__{name.upper()}"
        with pytest.raises(ConfigError) as info:
            load_config(None, {variable: env_value})
        assert info.value.field == f"{section}.{name}", env_value


@pytest.mark.parametrize("env, field, words", [
    ({"REJOINDER_LLM__TEMPERATURE": "-5.0"}, "llm.temperature", "between 0 and 2"),
    ({"REJOINDER_LLM__TIMEOUT_S": "inf"}, "llm.timeout_s", "finite"),
    # NaN passes every comparison: it was blamed on turn.model_after_s
    ({"REJOINDER_TURN__PAUSE_S": "nan"}, "turn.pause_s", "finite"),
    ({"REJOINDER_TURN__PAUSE_S": "100"}, "turn.pause_s", "between 0 and 10"),
    ({"REJOINDER_LLM__NICE": "20"}, "llm.nice", "between 0 and 19"),
])
def test_the_field_at_fault_is_the_one_named(env, field, words):
    with pytest.raises(ConfigError) as info:
        load_config(None, env)
    assert info.value.field == field
    assert words in str(info.value)


def test_options_built_in_code_are_checked_too():
    with pytest.raises(ConfigError) as info:
        TurnOptions(pause_s=math.nan)
    assert info.value.field == "turn.pause_s"
    with pytest.raises(ConfigError) as info:
        LLMOptions(temperature=math.inf)
    assert info.value.field == "llm.temperature"


def test_the_defaults_pass():
    load_config(None, {})


# -- the environment ------------------------------------------------------------------------
def test_a_variable_with_one_underscore_is_warned_about_naming_the_intended_one(caplog):
    with caplog.at_level(logging.WARNING, logger="rejoinder.config"):
        c = load_config(None, {"REJOINDER_SERVER_MAX_CALLS": "3", "PATH": "/bin"})
    assert c.server.max_calls == ServerOptions().max_calls  # ignored, but not silently
    assert "REJOINDER_SERVER_MAX_CALLS is not a setting" in caplog.text
    assert "did you mean REJOINDER_SERVER__MAX_CALLS?" in caplog.text
    assert "PATH" not in caplog.text


def test_a_misspelt_setting_in_the_environment_is_an_error_naming_the_intended_one():
    with pytest.raises(ConfigError) as info:
        load_config(None, {"REJOINDER_SERVER__MAXCALLS": "3"})
    assert info.value.field == "server.maxcalls"
    assert "REJOINDER_SERVER__MAXCALLS" in str(info.value)
    assert "did you mean REJOINDER_SERVER__MAX_CALLS?" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(None, {"REJOINDER_SERVR__PORT": "3"})
    assert info.value.field == "servr.port"
    assert "did you mean REJOINDER_SERVER__PORT?" in str(info.value)


def test_the_embedded_llm_runs_at_the_configured_nice(monkeypatch):
    from rejoinder.providers import factory
    from rejoinder.providers.local import smollm

    built: list[smollm.SmolLMOptions] = []
    monkeypatch.setattr(smollm, "SmolLM", built.append)  # the options it would load with
    factory._llm_provider(load_config(None, {"REJOINDER_LLM__NICE": "0"}), "local")
    factory._llm_provider(load_config(None, {}), "local")
    assert [o.nice for o in built] == [0, 10]
