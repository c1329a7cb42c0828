"""Phone calls on the server (Twilio Media Streams), against the real server app with the
fake stack, on virtual time: real sockets, the simulated Twilio caller (client/twilio.py)
or a raw WebSocket client for what a correct caller never sends."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from rejoinder.client.connection import CallFailed
from rejoinder.client.twilio import CallIdentity, PhoneCall, PhoneMic, answer, sign
from rejoinder.config import Config, ServerOptions, TelephonyOptions
from rejoinder.core.errors import ConfigError
from rejoinder.core.telephony import ulaw_encode
from rejoinder.providers.base import Stack
from rejoinder.server.app import Server
from rejoinder.testing import fake_stack
from rejoinder.testing.fakes import FakeLLM
from rejoinder.testing.virtual_time import run_virtual
from rejoinder.turn.playout import Playout

AUTH = "0123456789abcdef0123456789abcdef"
LONG = ("One two three four five six seven eight nine ten, eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty.")


def tone(seconds: float, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(round(seconds * 8000)) / 8000
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.int16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serving(stack: Stack | None = None, *, signed: bool = True,
                  **server: Any) -> AsyncIterator[tuple[str, Server]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    telephony = TelephonyOptions(public_url=url, twilio_auth_token=AUTH) if signed \
        else TelephonyOptions(allow_unsigned=True)
    config = dataclasses.replace(Config(), server=ServerOptions(port=port, **server),
                                 telephony=telephony)
    app = Server(config, stack or fake_stack())
    runner = web.AppRunner(app.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield url, app
    finally:
        await runner.cleanup()


async def _until(check: Callable[[], bool], limit_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


class RecordingCall(PhoneCall):
    """The simulated caller, also noting every ``clear`` it receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clears: list[float] = []

    async def _on_message(self, text: str) -> None:
        if json.loads(text).get("event") == "clear":
            self.clears.append(self.clock.now())
        await super()._on_message(text)


# -- a whole call ----------------------------------------------------------------------------
def test_a_phone_call_is_answered_in_real_time_and_recorded_with_its_call_sid() -> None:
    async def scenario() -> tuple[RecordingCall, list[dict[str, object]], Server, float]:
        async with serving(fake_stack(llm=FakeLLM(["Hello there, caller."]))) as (url, server):
            call = RecordingCall(PhoneMic(), auth_token=AUTH)
            await call.open(url)
            await _until(lambda: bool(server.calls))
            live = next(iter(server.calls.values()))
            seen: list[dict[str, object]] = []
            live.observers.append(seen.append)
            await asyncio.sleep(0.5)
            call.mic.play(tone(0.6))
            await call.mic.idle.wait()
            eos = call.clock.now()
            await _until(lambda: any(e["type"] == "trace" for e in seen))
            await asyncio.sleep(0.5)
            await call.close()
            await _until(lambda: not server.calls)
            return call, seen, server, eos

    call, seen, server, eos = run_virtual(scenario())
    assert call.protocol_errors == []
    loud = call.received.loud_times()
    assert len(loud) and loud[-1] > eos
    assert [e["outcome"] for e in seen if e["type"] == "trace"] == ["completed"]
    # Marks came back: the whole reply was confirmed as heard.
    assert call.marks_echoed
    assert call.clears == []
    # The agent's audio left one 20 ms frame every 20 ms (never faster than real time).
    times = call.received.times
    assert all(b - a >= 0.02 - 1e-6 for a, b in zip(times, times[1:], strict=False))


def test_barge_in_clears_twilio_and_keeps_only_the_confirmed_words() -> None:
    async def scenario() -> tuple[RecordingCall, list[dict[str, object]], Any, float]:
        async with serving(fake_stack(llm=FakeLLM([LONG, "Okay."]))) as (url, server):
            call = RecordingCall(PhoneMic(), auth_token=AUTH)
            await call.open(url)
            await _until(lambda: bool(server.calls))
            live = next(iter(server.calls.values()))
            seen: list[dict[str, object]] = []
            live.observers.append(seen.append)
            call.mic.play(tone(0.6))
            await _until(lambda: any(e["type"] == "agent" for e in seen))
            await asyncio.sleep(1.5)  # well into the long reply
            barge = call.clock.now()
            call.mic.play(tone(1.5))
            await _until(lambda: any(e["type"] == "interrupted" for e in seen))
            history = list(live.conversation.history)
            await call.close()
            await _until(lambda: not server.calls)
            return call, seen, history, barge

    call, seen, history, barge = run_virtual(scenario())
    assert len(call.clears) == 1 and call.clears[0] > barge
    interrupted = next(e for e in seen if e["type"] == "interrupted")
    heard = str(interrupted["heard"])
    assert heard and LONG.startswith(heard) and len(heard) < len(LONG)
    assert history[-1].role == "assistant" and history[-1].interrupted
    assert history[-1].content == heard
    # What was heard is what the echoed marks confirmed: no more audio than had been
    # played at the caller by the barge-in's decision.
    played_s = sum(len(c) for c in call.received.chunks) / 8000
    words = len(heard.split())
    assert words <= int(played_s / 0.25) + 1  # fake TTS: 0.25 s a word


def test_dtmf_reaches_the_observers_and_the_log_never_names_the_key(caplog) -> None:
    async def scenario() -> list[dict[str, object]]:
        async with serving() as (url, server):
            call = PhoneCall(PhoneMic(), auth_token=AUTH)
            await call.open(url)
            await _until(lambda: bool(server.calls))
            seen: list[dict[str, object]] = []
            next(iter(server.calls.values())).observers.append(seen.append)
            await asyncio.sleep(0.1)
            await call.send_dtmf("7")
            await _until(lambda: any(e["type"] == "dtmf" for e in seen))
            await call.close()
            return seen

    with caplog.at_level(logging.DEBUG):
        seen = run_virtual(scenario())
    assert {"type": "dtmf", "digit": "7"} in seen
    assert any("pressed a key" in r.getMessage() for r in caplog.records)
    assert not any("7" in r.getMessage() for r in caplog.records
                   if r.name.startswith("rejoinder.transports"))


# -- security -----------------------------------------------------------------------------
async def _post_webhook(url: str, params: dict[str, str], signature: str | None,
                        content_type: str | None = None) -> tuple[int, str]:
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    async with aiohttp.ClientSession() as http:
        if content_type is None:
            async with http.post(url + "/twilio/voice", data=params, headers=headers) as r:
                return r.status, await r.text()
        headers["Content-Type"] = content_type
        async with http.post(url + "/twilio/voice", data=json.dumps(params),
                             headers=headers) as r:
            return r.status, await r.text()


def test_webhook_signatures_are_checked() -> None:
    async def scenario() -> list[tuple[int, str]]:
        async with serving() as (url, server):
            params = CallIdentity().webhook_params()
            good = sign(AUTH, url + "/twilio/voice", params)
            out = [await _post_webhook(url, params, None),
                   await _post_webhook(url, params, sign("f" * 32, url + "/twilio/voice",
                                                         params)),
                   await _post_webhook(url, {**params, "From": "+12025550100"}, good),
                   await _post_webhook(url, params, good, "application/json"),
                   await _post_webhook(url, params, good)]
            assert not server.calls
            return out

    results = run_virtual(scenario())
    for status, body in results[:3]:
        assert status == 403 and json.loads(body)["code"] == "bad_signature"
    assert results[3][0] == 415
    status, body = results[4]
    assert status == 200 and "<Connect><Stream" in body and 'name="token"' in body
    assert 'url="ws://127.0.0.1:' in body and "/twilio/media" in body


def test_the_stream_upgrade_needs_its_signature_and_a_one_time_token() -> None:
    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with serving() as (url, server), aiohttp.ClientSession() as http:
            who = CallIdentity()
            stream = await answer(http, url, who, AUTH)
            for name, headers in (("unsigned", {}),
                                  ("wrong", {"X-Twilio-Signature": sign("f" * 32,
                                                                        stream.url)})):
                with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                    await http.ws_connect(stream.url, headers=headers)
                out[name] = err.value.status
            assert not server.calls
            # The token works once; a second stream with it is refused at its start.
            first = PhoneCall(PhoneMic(), auth_token=AUTH, identity=who)
            ws = await http.ws_connect(stream.url,
                                       headers={"X-Twilio-Signature": sign(AUTH, stream.url)})
            await first.attach(ws, stream)
            await _until(lambda: any(c.transport.start_info for c in server.calls.values()))
            replay = PhoneCall(PhoneMic(), auth_token=AUTH, identity=who)
            ws2 = await http.ws_connect(stream.url,
                                        headers={"X-Twilio-Signature": sign(AUTH, stream.url)})
            await replay.attach(ws2, stream)
            await _until(replay.hung_up.is_set)
            out["replay_close"] = ws2.close_code
            out["first_alive"] = not first.hung_up.is_set()
            # A token older than stream_token_ttl_s is refused too.
            later = CallIdentity()
            late = await answer(http, url, later, AUTH)
            await asyncio.sleep(31)
            expired = PhoneCall(PhoneMic(), auth_token=AUTH, identity=later)
            ws3 = await http.ws_connect(late.url,
                                        headers={"X-Twilio-Signature": sign(AUTH, late.url)})
            await expired.attach(ws3, late)
            await _until(expired.hung_up.is_set)
            out["expired_close"] = ws3.close_code
            for c in (first, replay, expired):
                await c.close()
            await _until(lambda: not server.calls)
        return out

    out = run_virtual(scenario())
    assert out["unsigned"] == 403 and out["wrong"] == 403
    assert out["replay_close"] == 1008 and out["expired_close"] == 1008
    assert out["first_alive"]


def test_without_an_auth_token_the_phone_routes_are_off() -> None:
    async def scenario() -> list[tuple[int, str]]:
        port = _free_port()
        config = dataclasses.replace(Config(), server=ServerOptions(port=port))
        runner = web.AppRunner(Server(config, fake_stack()).app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(url + "/twilio/voice", data={"CallSid": "CA1"}) as r:
                    a = (r.status, await r.text())
                async with http.get(url + "/twilio/media") as r:
                    b = (r.status, await r.text())
            return [a, b]
        finally:
            await runner.cleanup()

    for status, body in run_virtual(scenario()):
        assert status == 404 and json.loads(body)["code"] == "telephony_off"


def test_allow_unsigned_takes_calls_without_signatures() -> None:
    async def scenario() -> bool:
        async with serving(signed=False) as (url, server):
            call = PhoneCall(PhoneMic(), auth_token=None)
            await call.open(url)
            await _until(lambda: any(c.transport.start_info for c in server.calls.values()))
            await call.close()
            await _until(lambda: not server.calls)
            return True

    assert run_virtual(scenario())


# -- robustness -----------------------------------------------------------------------------
def test_bad_messages_are_dropped_and_another_call_is_answered_meanwhile(caplog) -> None:
    async def scenario() -> dict[str, Any]:
        async with serving(max_calls=4) as (url, server), aiohttp.ClientSession() as http:
            good = PhoneCall(PhoneMic(), auth_token=AUTH)
            await good.open(url)
            stream = await answer(http, url, CallIdentity(call_sid="CA" + "1" * 32), AUTH)
            ws = await http.ws_connect(stream.url,
                                       headers={"X-Twilio-Signature": sign(AUTH, stream.url)})
            sid = "MZ" + "0" * 32

            async def send(message: Any) -> None:
                await ws.send_str(message if isinstance(message, str) else json.dumps(message))

            def media(seq: int, payload: str, chunk: int | None = None) -> dict[str, Any]:
                return {"event": "media", "sequenceNumber": str(seq), "streamSid": sid,
                        "media": {"track": "inbound", "chunk": str(chunk or seq),
                                  "timestamp": "0", "payload": payload}}

            frame = base64.b64encode(ulaw_encode(np.zeros(160, np.int16))).decode()
            await send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await send({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
                "streamSid": sid, "callSid": "CA" + "1" * 32, "accountSid": "AC1",
                "customParameters": stream.parameters, "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                "channels": 1}}})
            await send(media(2, frame))
            for junk in ["{not json", "[]", '"media"', {"event": "hello"},
                         media(3, "!!!not base64!!!"), media(4, frame[:40]),
                         media(2, frame),  # sequence going backwards
                         {"event": "media", "sequenceNumber": "x", "media": {}},
                         {"event": "dtmf", "sequenceNumber": "9", "dtmf": {"digit": "55"}},
                         {"event": "mark", "sequenceNumber": "10", "mark": {"name": "nope"}}]:
                await send(junk)
            await ws.send_bytes(b"\x00\x01")
            await send(media(11, frame))
            await _until(lambda: len(server.calls) == 2 and all(
                c.transport.start_info for c in server.calls.values()))
            bad = next(c for c in server.calls.values()
                       if c.transport.start_info.call_sid.startswith("CA111"))
            await asyncio.sleep(0.2)
            problems = dict(bad.transport.problems)
            # The good call is answered meanwhile.
            good.mic.play(tone(0.6))
            await _until(lambda: len(good.received.loud_times()) > 0)
            # The bad one drops its socket: its call ends, the other goes on.
            await ws.close()
            await _until(lambda: len(server.calls) == 1)
            alive = not good.hung_up.is_set()
            await good.close()
            await _until(lambda: not server.calls)
            return {"problems": problems, "alive": alive}

    with caplog.at_level(logging.INFO):
        out = run_virtual(scenario())
    assert out["alive"]
    assert out["problems"] == {
        "malformed JSON": 1, "not an event": 2, "an unknown event": 1,
        "a payload that is not base64": 1, "a payload that is not 20 ms of 8 kHz mu-law": 1,
        "a message out of order": 1, "a bad sequenceNumber": 1,
        "a dtmf message without a key": 1, "a binary message": 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_stop_during_a_reply_ends_the_call_and_keeps_its_completed_turns() -> None:
    async def scenario() -> tuple[list[dict[str, object]], bool]:
        async with serving(fake_stack(llm=FakeLLM(["Short one.", LONG]))) as (url, server):
            call = PhoneCall(PhoneMic(), auth_token=AUTH)
            await call.open(url)
            await _until(lambda: bool(server.calls))
            live = next(iter(server.calls.values()))
            seen: list[dict[str, object]] = []
            live.observers.append(seen.append)
            call.mic.play(tone(0.6))
            await _until(lambda: any(e["type"] == "trace" for e in seen))
            call.mic.play(tone(0.6))
            await _until(lambda: sum(e["type"] == "agent" for e in seen) >= 2)
            await call.close()  # stop, in the middle of the long reply
            await _until(lambda: not server.calls)
            return seen, live.transport.failed

    seen, failed = run_virtual(scenario())
    assert [e["outcome"] for e in seen if e["type"] == "trace"] == ["completed", "abandoned"]
    assert not failed


# -- slots -----------------------------------------------------------------------------------
def test_phone_calls_count_against_max_calls_and_release_their_slots() -> None:
    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with serving(max_calls=1, connect_timeout_s=2.0, media_timeout_s=1.0) \
                as (url, server), aiohttp.ClientSession() as http:
            first = PhoneCall(PhoneMic(), auth_token=AUTH)
            await first.open(url)
            await _until(lambda: len(server.calls) == 1)
            with pytest.raises(CallFailed) as busy:
                await PhoneCall(PhoneMic(), auth_token=AUTH).open(url)
            out["busy"] = busy.value.status
            await first.close()
            await _until(lambda: not server.calls)
            # A stream that never starts is let go at connect_timeout_s.
            stream = await answer(http, url, CallIdentity(), AUTH)
            ws = await http.ws_connect(stream.url,
                                       headers={"X-Twilio-Signature": sign(AUTH, stream.url)})
            t0 = asyncio.get_running_loop().time()
            await _until(lambda: len(server.calls) == 1)
            await _until(lambda: not server.calls)
            out["no_start_s"] = asyncio.get_running_loop().time() - t0
            await ws.close()
            # A started stream whose media stops is let go after media_timeout_s.
            silent = PhoneCall(PhoneMic(), auth_token=AUTH)
            await silent.open(url)
            await _until(lambda: any(c.transport.start_info for c in server.calls.values()))
            await asyncio.sleep(0.3)
            silent._tasks[0].cancel()  # noqa: SLF001  (the phone's media sender dies)
            t1 = asyncio.get_running_loop().time()
            await _until(silent.hung_up.is_set)
            out["no_media_s"] = asyncio.get_running_loop().time() - t1
            await _until(lambda: not server.calls)
            await silent.close()
        return out

    out = run_virtual(scenario())
    assert out["busy"] == 503
    assert 2.0 <= out["no_start_s"] <= 2.1
    assert 1.0 - 0.05 <= out["no_media_s"] <= 1.1


# -- units -------------------------------------------------------------------------------------
def test_a_confirming_playout_counts_only_confirmed_audio_as_heard() -> None:
    playout = Playout(8000, confirmed=True)
    assert playout.frame_samples == 160
    index = playout.begin_clause(1, "one two three four")
    playout.push(1, index, np.ones(1600, np.int16))
    playout.end_clause(1, index)
    for _ in range(5):
        playout.pull()  # half of it sent
    assert playout.heard(1) == ""
    playout.confirm(400)  # a quarter confirmed
    assert playout.heard(1) == "one"
    playout.confirm(10_000)  # never beyond what was sent
    assert playout.heard(1) == "one two"
    for _ in range(5):
        playout.pull()
    assert playout.ended_clause
    playout.confirm(1600)
    assert playout.heard(1) == "one two three four"
    plain = Playout()
    assert plain.rate == 48_000 and plain.frame_samples == 960


def test_telephony_options_are_checked_and_the_token_stays_out_of_repr() -> None:
    options = TelephonyOptions(public_url="https://voice.example.org", twilio_auth_token=AUTH)
    assert AUTH not in repr(options) and options.enabled
    assert not TelephonyOptions().enabled and TelephonyOptions(allow_unsigned=True).enabled
    for bad in ({"twilio_auth_token": AUTH},
                {"public_url": "ftp://x.org"}, {"public_url": "https://x.org/?a=1"},
                {"stream_token_ttl_s": 0.0}, {"stream_token_ttl_s": float("nan")}):
        with pytest.raises(ConfigError):
            TelephonyOptions(**bad)  # type: ignore[arg-type]
