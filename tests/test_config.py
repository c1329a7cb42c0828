from __future__ import annotations

import pytest

from rejoinder.config import load_config
from rejoinder.core.errors import ConfigError


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
