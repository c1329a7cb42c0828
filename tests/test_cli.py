"""The ``rejoinder`` command: its subcommands' options, and how ``serve`` fails at start."""

from __future__ import annotations

import gc
import socket
import warnings
from collections.abc import Iterator

import pytest

from rejoinder import cli
from rejoinder.providers.base import Stack


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something already listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _refusing_url() -> str:
    """A loopback URL nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def quiet_serve(monkeypatch: pytest.MonkeyPatch, tmp_path) -> list[Stack]:
    """``serve`` with its log setup left to pytest and its call store in ``tmp_path``;
    returns the stacks that were closed."""
    import rejoinder.observability.logs as logs

    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)
    monkeypatch.setenv("REJOINDER_STORE__PATH", str(tmp_path / "calls.db"))
    closed: list[Stack] = []
    close = Stack.close

    async def recording_close(self: Stack) -> None:
        closed.append(self)
        await close(self)

    monkeypatch.setattr(Stack, "close", recording_close)
    return closed


def test_cloudsim_takes_its_own_options_through_the_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["cloudsim", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "rejoinder cloudsim" in out and "--port" in out and "--llm-ttft" in out


def test_cloudsim_listens_on_the_port_it_is_given(busy_port, caplog):
    # The port is taken, so the simulator stops at once: proof that --port reached it.
    assert cli.main(["cloudsim", "--port", str(busy_port), "--seed", "3"]) == 1
    assert f"cannot serve on 127.0.0.1:{busy_port}" in caplog.text


def test_serve_on_a_port_in_use_says_so_in_one_line(quiet_serve, busy_port, capsys):
    assert cli.main(["serve", "--stack", "fake", "--port", str(busy_port)]) == 2
    err = capsys.readouterr().err
    assert err == f"rejoinder: port {busy_port} on 127.0.0.1 is already in use " \
                  "(server.port, --port)\n"
    assert len(quiet_serve) == 1  # the providers were closed


def test_serve_with_a_provider_down_closes_the_stack_and_says_so_in_one_line(
        quiet_serve, monkeypatch, capsys):
    url = _refusing_url()
    for name, value in {"STT__PROVIDER": "remote", "STT__URL": url, "TTS__PROVIDER": "remote",
                        "TTS__URL": url, "LLM__PROVIDER": "openai", "LLM__MODEL": "m",
                        "LLM__BASE_URL": f"{url}/v1"}.items():
        monkeypatch.setenv(f"REJOINDER_{name}", value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["serve", "--stack", "fake", "--port", "0"]) == 2
        gc.collect()  # an HTTP session left open complains when collected
    err = capsys.readouterr().err
    assert err.startswith("rejoinder: a provider is not ready: ") and err.count("\n") == 1
    assert len(quiet_serve) == 1
    assert not [w for w in caught if "Unclosed" in str(w.message)]


def test_serve_primes_the_guardrails_safe_line_so_saying_it_costs_no_synthesis(
        quiet_serve, busy_port, monkeypatch) -> None:
    monkeypatch.setenv("REJOINDER_GUARDRAILS__SAFE_LINE", "Let's keep to your booking.")
    assert cli.main(["serve", "--stack", "fake", "--port", str(busy_port)]) == 2
    (stack,) = quiet_serve  # primed before the server tried to listen
    assert "Let's keep to your booking." in stack.tts._entries  # synthesised at start
    monkeypatch.setenv("REJOINDER_GUARDRAILS__ENABLED", "false")
    assert cli.main(["serve", "--stack", "fake", "--port", str(busy_port)]) == 2
    assert "Let's keep to your booking." not in quiet_serve[1].tts._entries
