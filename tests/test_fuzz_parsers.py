"""Property-based tests of every parser of outside input, called directly: Host and
Origin, the offer, the operator API's query values and call tokens, the caller's
``measured`` messages, Twilio's numbers and ``start``, the config file and environment,
and redaction. Bad input is refused with the project's own error (a
SignalingError, a ConfigError naming the field) or ignored, never an unhandled exception;
valid input round-trips."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rejoinder.config import load_config
from rejoinder.core.errors import ConfigError, SignalingError
from rejoinder.core.netloc import is_loopback, split_host, split_origin
from rejoinder.core.redact import redact
from rejoinder.observability.measured import MeasuredTurns
from rejoinder.server.guard import parse_offer
from rejoinder.server.operator import _when as parse_when
from rejoinder.server.operator import check_call_token, mint_call_token
from rejoinder.transports.twilio import _integer, _parse_start

# Deterministic (the same examples every run, no example database): a failure is
# reproduced by running the test again.
FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

# Text as it arrives from outside: any code point, some of them lookalikes of what the
# parsers want (Unicode digits, full-width colons), and the characters they split on.
_tricky = st.sampled_from(list("0123456789.:[]/@?#% \t-_+eE²٣０：ǅ\x00\u200b"))
hostile = st.one_of(st.text(max_size=60), st.text(_tricky, max_size=30))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


# -- Host and Origin -----------------------------------------------------------------------
@FAST
@given(hostile)
def test_host_and_origin_parsers_never_raise(value: str) -> None:
    host = split_host(value)
    if host is not None:
        name, port = host
        assert name and (port is None or 0 < port < 65536)
    origin = split_origin(value)
    if origin is not None:
        assert origin[0] in ("http", "https") and 0 <= origin[2] < 65536
    assert isinstance(is_loopback(value), bool)


@FAST
@given(st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True),
       st.none() | st.integers(1, 65535), st.sampled_from(["http", "https"]))
def test_host_and_origin_round_trip(name: str, port: int | None, scheme: str) -> None:
    text = name if port is None else f"{name}:{port}"
    assert split_host(text.upper()) == (name, port)
    origin = split_origin(f"{scheme}://{text}")
    if origin is not None:  # urlsplit refuses some names ("a..b" is fine, "-" too)
        assert origin == (scheme, name, port or {"http": 80, "https": 443}[scheme])


# -- the offer -----------------------------------------------------------------------------
_SDP_LINES = st.sampled_from([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111",
    "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
    "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
    "a=candidate:1 1 tcp 1 127.0.0.1 9 typ host", "a=candidate:", "a=fingerprint:sha-256 AB",
    "a=rtpmap:111 opus/48000/2", "c=IN IP4 0.0.0.0", ""])


@FAST
@given(st.one_of(json_values, st.fixed_dictionaries(
    {"type": st.sampled_from(["offer", "answer", 1]),
     "sdp": st.one_of(st.text(max_size=40), st.lists(_SDP_LINES, max_size=12).map("\r\n".join),
                      st.lists(_SDP_LINES, max_size=12).map(lambda ls: "\n".join(["v=0", *ls])),
                      st.integers())})))
def test_offer_parser_refuses_with_a_signaling_error(body: Any) -> None:
    try:
        sdp = parse_offer(body)
    except SignalingError as exc:
        assert 400 <= exc.status < 500 and exc.code and exc.message
    else:  # what it lets through has what a call needs
        assert sdp == body["sdp"] and "a=fingerprint:" in sdp and " udp " in sdp.lower()


# -- operator API values -------------------------------------------------------------------
@FAST
@given(hostile, st.booleans())
@example("9999-12-31", True)  # the end of the last day is past datetime's range
@example("0001-01-01T00:00:00+01:00", False)  # before datetime's range in UTC
def test_dates_are_a_datetime_or_a_bad_field(value: str, end: bool) -> None:
    try:
        when = parse_when(value, "from", end=end)
    except SignalingError as exc:
        assert exc.status == 400 and exc.code == "bad_field"
    else:
        assert when is None or when.tzinfo is UTC


@FAST
@given(st.datetimes(timezones=st.just(UTC)))
def test_dates_round_trip(when: datetime) -> None:
    assert parse_when(when.isoformat(), "from", end=False) == when


@FAST
@given(hostile, st.text(min_size=16, max_size=40))
@example("².abc", "k" * 16)  # a digit that is no ASCII digit
@example("١٢٣.abc", "k" * 16)
def test_call_tokens_are_checked_without_raising(value: str, key: str) -> None:
    why = check_call_token(value, key, time.time())
    assert why is None or isinstance(why, str)
    if why is None:
        assert value == key or value.split(".")[0].isascii()


@FAST
@given(st.text(min_size=16, max_size=40), st.floats(1, 86_000))
def test_minted_call_tokens_are_valid(key: str, ttl_s: float) -> None:
    now = time.time()
    assert check_call_token(mint_call_token(key, ttl_s, now), key, now) is None


# -- the caller's measured messages --------------------------------------------------------
@FAST
@given(st.one_of(hostile, json_values.map(json.dumps), json_values))
def test_measured_messages_never_raise(message: object) -> None:
    gate = MeasuredTurns()
    for turn in range(3):
        gate.on_event({"type": "user", "turn": turn})
        gate.on_event({"type": "agent", "turn": turn})
    event = gate.accept(message)
    assert event is None or (event["type"] == "measured" and isinstance(event["v2v_ms"], float))


@FAST
@given(st.integers(0, 5), st.floats(0.1, 60_000))
def test_a_valid_measurement_is_taken_once(turn: int, v2v_ms: float) -> None:
    gate = MeasuredTurns()
    gate.on_event({"type": "user", "turn": turn})
    gate.on_event({"type": "agent", "turn": turn})
    message = json.dumps({"type": "measured", "turn": turn, "v2v_ms": v2v_ms})
    assert gate.accept(message) == {"type": "measured", "turn": turn,
                                    "v2v_ms": round(v2v_ms, 1)}
    assert gate.accept(message) is None


# -- Twilio's numbers and start ------------------------------------------------------------
@FAST
@given(st.one_of(hostile, json_values))
@example("²")  # str.isdigit() is true for it; int() refuses it
@example("٣")
def test_twilio_numbers_are_an_int_or_none(value: object) -> None:
    number = _integer(value)
    assert number is None or isinstance(number, int)


@FAST
@given(st.integers(0, 10**18 - 1))
def test_twilio_numbers_round_trip(value: int) -> None:
    assert _integer(str(value)) == value == _integer(value)


@FAST
@given(st.one_of(json_values, st.fixed_dictionaries(
    {"streamSid": json_values, "callSid": json_values,
     "mediaFormat": st.one_of(json_values, st.fixed_dictionaries(
         {"encoding": st.sampled_from(["audio/x-mulaw", "audio/l16"]),
          "sampleRate": st.sampled_from([8000, "8000", "٨٠٠٠", 16000, None]),
          "channels": st.sampled_from([1, "1", 2, "²", None])})),
     "customParameters": json_values})))
def test_twilio_start_is_parsed_or_refused(start: Any) -> None:
    parsed = _parse_start(start)
    if parsed is not None:
        assert parsed.stream_sid and parsed.call_sid and len(parsed.parameters) <= 32


# -- config: TOML and the environment ------------------------------------------------------
_SECTIONS = {"server": ["port", "max_calls", "host", "allowed_hosts", "allowed_origins",
                        "connect_timeout_s", "admin_token", "ice_servers"],
             "turn": ["end_silence_s", "speculate", "model", "pause_s"],
             "llm": ["provider", "base_url", "backends", "temperature"],
             "store": ["url", "keep_days", "redact"],
             "telephony": ["public_url", "twilio_auth_token", "allow_unsigned"],
             "agent": ["name", "greeting", "tools", "max_tool_rounds"],
             "guardrails": ["enabled", "deny_patterns"], "nosuch": ["x"]}
toml_values = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=20) | st.datetimes().map(lambda d: d.replace(microsecond=0)),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), inner, max_size=3),
    max_leaves=6)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") \
            if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"


@FAST
@given(st.sampled_from(sorted(_SECTIONS)).flatmap(
    lambda s: st.tuples(st.just(s), st.sampled_from(_SECTIONS[s]), toml_values)))
@example(("server", "port", [1]))  # a list where a number belongs
@example(("server", "port", {"a": 1}))
@example(("turn", "end_silence_s", datetime(2026, 1, 1)))
def test_config_file_values_are_a_config_or_a_config_error(
        tmp_path: Path, setting: tuple[str, str, object]) -> None:
    section, name, value = setting
    path = tmp_path / "fuzz.toml"
    path.write_text(f"[{section}]\n{name} = {_toml(value)}\n")
    try:
        load_config(path, env={})
    except ConfigError as exc:  # names the field, or one it depends on in its section
        assert exc.field.startswith(section) or exc.field == "(file)", str(exc)


@FAST
@given(st.sampled_from(sorted(s for s in _SECTIONS if s != "nosuch")).flatmap(
    lambda s: st.tuples(st.just(s), st.sampled_from(_SECTIONS[s]))), hostile)
def test_environment_values_are_a_config_or_a_config_error(setting: tuple[str, str],
                                                          value: str) -> None:
    section, name = setting
    try:
        load_config(None, env={f"REJOINDER_{section.upper()}__{name.upper()}": value})
    except ConfigError as exc:
        assert exc.field.startswith(f"{section}."), str(exc)


@FAST
@given(st.integers(1, 10_000), st.integers(0, 65535))
def test_valid_config_values_round_trip(max_calls: int, port: int) -> None:
    config = load_config(None, env={"REJOINDER_SERVER__MAX_CALLS": str(max_calls),
                                    "REJOINDER_SERVER__PORT": str(port)})
    assert (config.server.max_calls, config.server.port) == (max_calls, port)


# -- redaction -----------------------------------------------------------------------------
_speech = st.lists(st.one_of(
    st.sampled_from(["four", "two", "double", "oh", "five", "hundred", "thousand", "nine",
                     "at", "dot", "com", "my", "card", "is", "-", ",", "4111", "1111", "GB82",
                     "WEST", "1234", "5698", "@", "example", ".", "twenty", "ninety"]),
    st.text(max_size=6)), max_size=40).map(" ".join)


def _digits(text: str) -> int:
    return sum(ch.isdecimal() for ch in text)


@settings(FAST, max_examples=300)
@given(st.one_of(_speech, st.text(max_size=200)))
def test_redaction_never_raises_is_idempotent_and_adds_no_digits(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
    assert _digits(once) <= _digits(text)


@pytest.mark.parametrize("unit", ["4 ", "four ", "a@b.", "x.com ", "1-", "GB82 "])
def test_redaction_time_grows_about_linearly(unit: str) -> None:
    def cost(n: int) -> float:
        text = unit * n
        start = time.perf_counter()
        redact(text)
        return time.perf_counter() - start

    cost(200)  # warm
    small, large = min(cost(1000) for _ in range(3)), min(cost(8000) for _ in range(3))
    # 8x the text: linear is 8x, quadratic 64x. Under 40x leaves room for a shared
    # machine's noise and still catches a quadratic (a run of digit words measures ~30x).
    assert large < max(small, 1e-4) * 40, (small, large)
