"""The simulated phone caller (client/twilio.py): Twilio's side of Media Streams.

Timing tests run on the virtual clock with an in-memory WebSocket; the protocol tests run
against a stand-in server (aiohttp, in this file) that checks signatures the way the
``twilio`` library does, with time bounds that a correct caller cannot miss.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from rejoinder.bench.caller import run_call
from rejoinder.bench.measure import turns_of
from rejoinder.bench.scripts import Script, Turn
from rejoinder.client.connection import CallFailed
from rejoinder.client.measure import onset_after
from rejoinder.client.twilio import (
    PHONE_RATE,
    PhoneCall,
    PhoneMic,
    StreamAnswer,
    parse_twiml,
)
from rejoinder.core.telephony import ulaw_decode, ulaw_encode
from rejoinder.testing.virtual_time import run_virtual

TOKEN = "0123456789abcdef0123456789abcdef"
SID = re.compile(r"^{}[0-9a-f]{{32}}$")


def tone(seconds: float, rate: int = PHONE_RATE, amplitude: int = 8000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def media(stream_sid: str, pcm: np.ndarray) -> dict[str, Any]:
    payload = base64.b64encode(ulaw_encode(pcm)).decode()
    return {"event": "media", "streamSid": stream_sid, "media": {"payload": payload}}


def mark(stream_sid: str, name: str) -> dict[str, Any]:
    return {"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}


class MemorySocket:
    """The server's end of the WebSocket, in memory: what the caller sent, with the time."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self._inbox: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()

    async def send_str(self, data: str) -> None:
        self.sent.append((asyncio.get_running_loop().time(), json.loads(data)))

    async def receive(self) -> aiohttp.WSMessage:
        return await self._inbox.get()

    async def close(self) -> bool:
        self._inbox.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None))
        return True

    def push(self, message: dict[str, Any]) -> None:
        self._inbox.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.TEXT, json.dumps(message),
                                                 None))

    def events(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, m) for t, m in self.sent if m["event"] == kind]


async def _attached() -> tuple[PhoneCall, MemorySocket]:
    call = PhoneCall(PhoneMic())
    ws = MemorySocket()
    await call.attach(ws, StreamAnswer("ws://test/twilio/media", {"caller": "test"}))
    return call, ws


def test_messages_in_order_with_sequence_numbers_and_20_ms_pacing():
    async def scenario() -> tuple[PhoneCall, MemorySocket, int]:
        call, ws = await _attached()
        first = call.mic.play(tone(0.1))  # five frames of speech, then silence
        await asyncio.sleep(0.25)
        await call.send_dtmf("7")
        await asyncio.sleep(0.1)
        await call.close()
        return call, ws, first

    call, ws, first = run_virtual(scenario())
    kinds = [m["event"] for _, m in ws.sent]
    assert kinds[0] == "connected" and kinds[1] == "start" and kinds[-1] == "stop"
    assert "sequenceNumber" not in ws.sent[0][1]
    assert ws.sent[0][1] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    # Every message after connected: the next sequence number, as a string, from "1".
    assert [m["sequenceNumber"] for _, m in ws.sent[1:]] == \
        [str(i) for i in range(1, len(ws.sent))]
    assert all(m["streamSid"] == call.stream_sid for _, m in ws.sent[1:])
    assert SID.pattern.format("MZ") and re.match(SID.pattern.format("MZ"), call.stream_sid)
    start = ws.sent[1][1]["start"]
    assert re.match(SID.pattern.format("CA"), start["callSid"])
    assert re.match(SID.pattern.format("AC"), start["accountSid"])
    assert start["streamSid"] == call.stream_sid and start["tracks"] == ["inbound"]
    assert start["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                    "channels": 1}
    assert start["customParameters"] == {"caller": "test"}
    # Media every 20 ms exactly, chunk counting from 1, timestamps in ms from the start.
    sent = ws.events("media")
    times = np.array([t for t, _ in sent])
    assert np.allclose(np.diff(times), 0.02, atol=1e-9)
    assert [m["media"]["chunk"] for _, m in sent] == [str(i + 1) for i in range(len(sent))]
    assert [m["media"]["timestamp"] for _, m in sent] == [str(20 * i) for i in range(len(sent))]
    assert all(m["media"]["track"] == "inbound" for _, m in sent)
    assert len(sent) == 18  # 0.35 s of call at 50 frames a second, the first at 0
    payloads = [base64.b64decode(m["media"]["payload"]) for _, m in sent]
    assert all(len(p) == 160 for p in payloads)
    spoken = np.concatenate([ulaw_decode(p) for p in payloads])
    assert np.array_equal(spoken[first:first + 800], ulaw_decode(ulaw_encode(tone(0.1))))
    assert not spoken[first + 800:].any()  # silence on the line after the speech
    # The mic's clock: the first speech sample was spoken 20 ms before its frame went out.
    assert call.mic.time_of(first) == pytest.approx(times[0] - 0.02)
    dtmf = ws.events("dtmf")
    assert [m["dtmf"] for _, m in dtmf] == [{"track": "inbound_track", "digit": "7"}]
    assert ws.sent[-1][1]["stop"] == {"accountSid": start["accountSid"],
                                      "callSid": start["callSid"]}


def test_audio_plays_in_real_time_and_marks_are_echoed_once_it_has_played():
    async def scenario() -> tuple[PhoneCall, MemorySocket]:
        call, ws = await _attached()
        sid = call.stream_sid
        await asyncio.sleep(0.5)
        ws.push(mark(sid, "idle"))                 # nothing queued: echoed at once
        ws.push(media(sid, tone(0.1)))             # plays 0.50-0.60
        ws.push(mark(sid, "a"))
        await asyncio.sleep(0.03)
        ws.push(media(sid, tone(0.06)))            # arrives at 0.53, queued: 0.60-0.66
        ws.push(mark(sid, "b"))
        await asyncio.sleep(0.5)
        ws.push(media(sid, tone(0.02)))            # the speaker idle again: plays on arrival
        await asyncio.sleep(0.1)
        await call.close()
        return call, ws

    call, ws = run_virtual(scenario())
    echoed = [(round(t, 6), m["mark"]["name"]) for t, m in ws.events("mark")]
    assert echoed == [(0.5, "idle"), (0.6, "a"), (0.66, "b")]
    times = call.received.times
    assert np.allclose(times, [0.5 + 0.02 * i for i in range(8)] + [1.03])
    assert all(len(c) == 160 for c in call.received.chunks)


def test_clear_drops_queued_audio_and_echoes_pending_marks_at_once():
    async def scenario() -> tuple[PhoneCall, MemorySocket]:
        call, ws = await _attached()
        sid = call.stream_sid
        await asyncio.sleep(1.0)
        ws.push(media(sid, tone(1.0)))             # would play 1.0-2.0
        ws.push(mark(sid, "m1"))
        ws.push(media(sid, tone(0.5)))
        ws.push(mark(sid, "m2"))
        await asyncio.sleep(0.25)
        ws.push({"event": "clear", "streamSid": sid})
        await asyncio.sleep(0.05)
        ws.push(media(sid, tone(0.04)))            # after the clear: plays on arrival
        await asyncio.sleep(0.5)
        await call.close()
        return call, ws

    call, ws = run_virtual(scenario())
    echoed = [(round(t, 6), m["mark"]["name"]) for t, m in ws.events("mark")]
    assert echoed == [(1.25, "m1"), (1.25, "m2")]
    loud = call.received.loud_times(threshold=1)
    before = loud[loud < 1.3]
    # Nothing of the cleared audio was played after the clear, not even the rest of its frame.
    assert before[-1] < 1.25 and before[-1] > 1.25 - 0.001
    assert loud[loud >= 1.25][0] == pytest.approx(1.3, abs=0.001)
    assert loud[-1] < 1.34


def test_voice_to_voice_counts_from_when_the_audio_plays_not_when_it_arrives():
    """Audio queued behind audio still playing is heard later than it arrived."""

    async def scenario() -> tuple[PhoneCall, float]:
        call, ws = await _attached()
        sid = call.stream_sid
        first = call.mic.play(tone(0.5))
        await call.mic.idle.wait()
        eos = call.mic.time_of(first + 4000 - 1)
        assert eos is not None
        eos += 1 / PHONE_RATE
        ws.push(media(sid, np.zeros(4000, dtype=np.int16)))  # 0.5 s of silence first
        await asyncio.sleep(0.1)
        ws.push(media(sid, tone(0.3)))             # arrives 100 ms after EoS, plays at 500
        await asyncio.sleep(1.0)
        await call.close()
        return call, eos

    call, eos = run_virtual(scenario())
    onset = onset_after(call.received.loud_times(), eos)
    assert onset is not None
    assert round((onset - eos) * 1000.0, 1) == pytest.approx(500.0, abs=0.2)


def test_messages_twilio_would_refuse_are_counted_not_played():
    async def scenario() -> PhoneCall:
        call, ws = await _attached()
        ws.push(media("MZ" + "0" * 32, tone(0.1)))  # another stream's audio
        ws.push({"event": "media", "streamSid": call.stream_sid, "media": {"payload": "!!"}})
        ws.push({"event": "mark", "streamSid": call.stream_sid, "mark": {}})
        await asyncio.sleep(0.1)
        await call.close()
        return call

    call = run_virtual(scenario())
    assert len(call.protocol_errors) == 3
    assert call.received.chunks == []


def test_twiml_parsing():
    answer = parse_twiml(
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        '<Stream url="wss://example.org/twilio/media"><Parameter name="a" value="1"/>'
        '<Parameter name="b" value="two"/></Stream></Connect></Response>',
        "https://example.org/twilio/voice")
    assert answer == StreamAnswer("wss://example.org/twilio/media", {"a": "1", "b": "two"})
    relative = parse_twiml('<Response><Connect><Stream url="/twilio/media"/></Connect>'
                           '</Response>', "http://127.0.0.1:9/twilio/voice")
    assert relative.url == "ws://127.0.0.1:9/twilio/media"
    with pytest.raises(CallFailed) as refused:
        parse_twiml("<Response><Reject/></Response>", "http://x/twilio/voice")
    assert refused.value.status == 503
    with pytest.raises(CallFailed):  # a one-way stream cannot carry the agent's voice
        parse_twiml('<Response><Start><Stream url="wss://x/s"/></Start></Response>', "http://x/")


# -- against a stand-in server over real HTTP and WebSocket --------------------------------


class StandIn:
    """Answers the webhook like a Media Streams app would, and talks back: after each of
    the caller's utterances (0.3 s of silent frames), a tone (``first_reply_s`` long, then
    0.2 s) and a mark; when the caller speaks over the first reply, a clear."""

    def __init__(self, token: str, first_reply_s: float = 0.2) -> None:
        self.validator = RequestValidator(token)
        self.first_reply_s = first_reply_s
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.webhook_params: dict[str, str] = {}
        self.sent_marks: dict[str, float] = {}
        self.cleared_at: float | None = None
        self.refused: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twilio/voice", self.voice)
        app.router.add_get("/twilio/media", self.media)
        return app

    async def voice(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        signature = request.headers.get("X-Twilio-Signature", "")
        if not self.validator.validate(str(request.url), form, signature):
            self.refused.append("voice")
            return web.Response(status=403)
        self.webhook_params = {k: str(v) for k, v in form.items()}
        stream = f"ws://{request.host}/twilio/media"
        return web.Response(content_type="text/xml", text=(
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="{stream}"><Parameter name="greeting" value="none"/></Stream>'
            '</Connect></Response>'))

    async def media(self, request: web.Request) -> web.WebSocketResponse:
        # Twilio signs the stream's URL as the TwiML gave it: ws(s)://, not http(s)://.
        signed = str(request.url.with_scheme("ws"))
        if not self.validator.validate(signed, {}, request.headers.get("X-Twilio-Signature", "")):
            self.refused.append("media")
            raise web.HTTPForbidden
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid, speaking, quiet, utterance = "", False, 0, 0
        async for msg in ws:
            message = json.loads(msg.data)
            self.received.append((time.monotonic(), message))
            if message["event"] == "start":
                sid = message["streamSid"]
            if message["event"] != "media":
                continue
            loud = np.abs(ulaw_decode(base64.b64decode(message["media"]["payload"]))).max() > 500
            if loud and not speaking:
                speaking, utterance = True, utterance + 1
                if utterance == 2:  # the caller talks over the long reply: stop it
                    await ws.send_json({"event": "clear", "streamSid": sid})
                    self.cleared_at = time.monotonic()
            quiet = 0 if loud else quiet + 1
            if speaking and quiet == 15:  # 0.3 s of silence: the caller's turn ended
                speaking = False
                name = f"reply{utterance}"
                await ws.send_json(media(sid, tone(
                    self.first_reply_s if utterance == 1 else 0.2)))
                await ws.send_json(mark(sid, name))
                self.sent_marks[name] = time.monotonic()
        return ws


@pytest.fixture
async def stand_in(request):
    server = StandIn(TOKEN, getattr(request, "param", 0.2))
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_signed_call_against_a_stand_in_server(stand_in):
    server, url = stand_in
    call = PhoneCall(PhoneMic(), auth_token=TOKEN)
    await call.open(url)
    call.mic.play(tone(0.3))
    for _ in range(500):  # at most 10 s
        if "reply1" in [n for _, n in call.marks_echoed]:
            break
        await asyncio.sleep(0.02)
    await call.close()
    await asyncio.sleep(0.1)  # the stand-in reads the last messages

    assert server.refused == []
    p = server.webhook_params
    assert p["CallSid"] == call.call_id and re.match(SID.pattern.format("CA"), p["CallSid"])
    assert re.match(SID.pattern.format("AC"), p["AccountSid"])
    assert p["Direction"] == "inbound" and p["CallStatus"] == "ringing"
    assert p["From"] and p["To"]
    kinds = [m["event"] for _, m in server.received]
    assert kinds[:3] == ["connected", "start", "media"] and kinds[-1] == "stop"
    assert [m["sequenceNumber"] for _, m in server.received[1:]] == \
        [str(i) for i in range(1, len(server.received))]
    assert server.received[1][1]["start"]["customParameters"] == {"greeting": "none"}
    # Sent 20 ms apart on a schedule: n frames take (n - 1) x 20 ms, give or take a little
    # lateness of the last one (never earlier).
    media_times = [t for t, m in server.received if m["event"] == "media"]
    span = media_times[-1] - media_times[0]
    assert span >= (len(media_times) - 1) * 0.02 - 0.005
    # The mark came back only after its 0.2 s of audio had played.
    echo = next(t for t, m in server.received if m["event"] == "mark")
    assert echo - server.sent_marks["reply1"] >= 0.2 - 0.005
    assert call.protocol_errors == []


async def test_a_wrong_token_is_refused(stand_in):
    server, url = stand_in
    call = PhoneCall(PhoneMic(), auth_token="not-the-token")
    with pytest.raises(CallFailed) as failed:
        await call.open(url)
    assert failed.value.status == 403
    assert server.refused == ["voice"]


@pytest.mark.parametrize("stand_in", [3.0], indirect=True)
async def test_the_bench_caller_measures_a_phone_call(stand_in):
    """A two-turn script over the phone: v2v from the played audio, the barge-in
    cut short by the server's clear (which echoes the pending mark at once)."""
    server, url = stand_in
    speech = tone(0.6, rate=16_000)
    script = Script("phone", (Turn("tone:0.6", speech),
                              Turn("tone:0.6", speech, interrupt_after_s=0.5)), lead_s=0.3)
    record = await run_call(url, script, reply_timeout_s=5.0, transport="twilio",
                            auth_token=TOKEN)
    turns = turns_of(record, call=0, ideal=None)
    assert record.call_id.startswith("CA") and record.traces == []
    # The stand-in answers after 0.3 s of silence (15 frames): never sooner than that.
    v2v = turns[0]["v2v_ms"]
    assert v2v is not None and 300.0 - 20.0 <= v2v < 3000.0
    # The second turn starts 0.5 s into the 3 s reply; the clear stops the agent at once.
    barge = turns[1]["barge_in_ms"]
    assert barge is not None and 0.0 <= barge < 1000.0
    assert turns[1]["v2v_ms"] is not None and turns[1]["v2v_ms"] >= 300.0 - 20.0
    echoed = [m["mark"]["name"] for _, m in server.received if m["event"] == "mark"]
    assert echoed[:2] == ["reply1", "reply2"]
    assert server.cleared_at is not None


@pytest.fixture
def stand_in_thread():
    """The stand-in on its own loop in a thread, for commands that run their own loop."""
    import threading

    server = StandIn(TOKEN)
    app = server.app()
    async def health(_: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/api/health", health)
    loop = asyncio.new_event_loop()
    started: list[str] = []
    ready = threading.Event()

    async def serve() -> web.AppRunner:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        started.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")  # type: ignore[union-attr]
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield server, started[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.mark.slow  # real time, end to end through the command
def test_rejoinder_call_over_the_phone(stand_in_thread, tmp_path, capsys, monkeypatch):
    from rejoinder.cli import main
    from rejoinder.core.audio import read_wav, write_wav

    server, url = stand_in_thread
    wav, out = tmp_path / "ask.wav", tmp_path / "reply.wav"
    write_wav(wav, np.concatenate([tone(0.6, rate=16_000), np.zeros(8000, np.int16)]), 16_000)
    # The token as the server reads it from the environment, when --auth-token is not given.
    monkeypatch.setenv("REJOINDER_TELEPHONY__TWILIO_AUTH_TOKEN", TOKEN)
    code = main(["call", "--transport", "twilio", "--url", url, "--wav", str(wav),
                 "--out", str(out), "--tail", "5"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert server.refused == []
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if "v2v ms" in line)
    rows = [line.split() for line in lines[header + 1:]]
    rows = rows[:rows.index([])] if [] in rows else rows
    # The stand-in keeps no call records, so the server's turn number is unknown: "-".
    assert [r[0] for r in rows] == ["-"]
    v2v = float(rows[0][1])
    assert 280.0 <= v2v < 3000.0
    assert len(read_wav(out, PHONE_RATE)) == 0.2 * PHONE_RATE  # the reply as played, 8 kHz


@pytest.mark.slow  # real time, end to end through the command
def test_rejoinder_bench_over_the_phone(stand_in_thread, tmp_path, capsys):
    from rejoinder.cli import main

    server, url = stand_in_thread
    script = tmp_path / "phone.toml"
    script.write_text('name = "phone"\nlead_s = 0.3\n'
                      '[[turn]]\nsay = "tone:0.6"\n[[turn]]\nsay = "tone:0.6"\ngap_s = 0.5\n')
    code = main(["bench", "--transport", "twilio", "--auth-token", TOKEN, "--url", url,
                 "--script", str(script), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["meta"]["transport"] == "twilio"
    turns = results["runs"][0]["turns"]
    assert [t["replied"] for t in turns] == [True, True]
    assert all(280.0 <= t["v2v_ms"] < 3000.0 for t in turns)
    assert server.refused == []


@pytest.mark.slow  # real time, the real server over real sockets
async def test_the_bench_caller_against_the_real_server():
    """Caller and server speak the same protocol: a signed call with a barge-in, replies
    measured from the played audio, no message the caller would refuse."""
    import dataclasses
    import socket

    from rejoinder.config import Config, ServerOptions, TelephonyOptions
    from rejoinder.server.app import Server
    from rejoinder.testing import FakeLLM, fake_stack

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    config = dataclasses.replace(
        Config(), server=ServerOptions(host="127.0.0.1", port=port),
        telephony=TelephonyOptions(public_url=url, twilio_auth_token=TOKEN))
    long_reply = " ".join(["This is a long reply that goes on and on."] * 6)
    server = Server(config, fake_stack(llm=FakeLLM([long_reply, "Okay."])))
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    speech = tone(0.8, rate=16_000)
    script = Script("phone", (Turn("tone:0.8", speech),
                              Turn("tone:0.8", speech, interrupt_after_s=1.0)), lead_s=0.5)
    try:
        record = await run_call(url, script, reply_timeout_s=10.0, transport="twilio",
                                auth_token=TOKEN)
    finally:
        await runner.cleanup()
    assert [e for e in record.events if e.get("type") == "protocol_error"] == []
    turns = turns_of(record, call=0, ideal=None)
    assert [t["replied"] for t in turns] == [True, True]
    assert turns[1]["barge_in_ms"] is not None and turns[1]["barge_in_ms"] < 1500.0
