"""The live server against generated requests and messages (``rejoinder.bench.fuzz``), and
the faults that fuzzing found, each as a regression test: no 5xx, no call slot held."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from rejoinder.bench.fuzz import _OFFER, fuzz
from rejoinder.config import Config, ServerOptions, TelephonyOptions
from rejoinder.server.app import run_server
from rejoinder.testing import fake_stack


@contextlib.asynccontextmanager
async def phone_server(**server_options: object) -> AsyncIterator[str]:
    """The real server with phone calls on (unsigned), records in the test's data home."""
    config = dataclasses.replace(
        Config(), server=ServerOptions(host="127.0.0.1", port=0, **server_options),  # type: ignore[arg-type]
        telephony=TelephonyOptions(allow_unsigned=True))
    ready, bound = asyncio.Event(), []
    task = asyncio.create_task(run_server(config, fake_stack(), ready=ready, bound=bound))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield f"http://127.0.0.1:{bound[0]}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_generated_requests_get_no_5xx_and_leave_no_call_held() -> None:
    async with phone_server(max_calls=64, connect_timeout_s=0.5, media_timeout_s=0.5) as url:
        report = await fuzz(url, 600, seed=7, concurrency=4, settle_s=10)
    assert report.ok, report.summary()
    assert report.requests >= 600 and report.statuses["ws 101"] > 0


_UNREADABLE = [("application/x-www-form-urlencoded; charset=nosuch", b"token=abc"),
               ("application/x-www-form-urlencoded; charset=utf-16", b"token=abc"),
               ("application/x-www-form-urlencoded", b"token=\xff")]


@pytest.mark.parametrize("path,content_type,body", [
    ("/dashboard/login", "multipart/form-data; boundary=x", b"token=abc"),  # not in the body
    ("/dashboard/login", "multipart/form-data", b"x"),  # no boundary at all
    *((path, content_type, body) for path in ("/dashboard/login", "/twilio/voice")
      for content_type, body in _UNREADABLE)])
async def test_an_unreadable_form_is_a_400(path: str, content_type: str, body: bytes) -> None:
    async with phone_server() as url, aiohttp.ClientSession() as session, \
            session.post(url + path, data=body, headers={"Content-Type": content_type}) as r:
        assert r.status == 400 and (await r.json())["code"] == "bad_form"


async def test_a_bundle_group_naming_a_missing_section_is_refused() -> None:
    sdp = _OFFER.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 nosuch")
    async with phone_server() as url, aiohttp.ClientSession() as session:
        async with session.post(url + "/api/offer",
                                json={"type": "offer", "sdp": sdp}) as r:
            assert r.status == 400 and (await r.json())["code"] == "bad_offer"
        async with session.get(url + "/api/health") as r:
            assert (await r.json())["calls"] == 0


async def test_hostile_stream_messages_do_not_end_the_call() -> None:
    """Deep nesting (RecursionError in json) and a digit that is no ASCII digit (int()
    refuses "²") are dropped like any bad message; the stream goes on."""
    async with phone_server() as url, aiohttp.ClientSession() as session:
        async with session.post(url + "/twilio/voice", data={"CallSid": "CA1"}) as r:
            token = (await r.text()).split('name="token" value="', 1)[1].split('"', 1)[0]
        async with session.ws_connect(url + "/twilio/media", autoping=False) as ws:
            await ws.send_str(json.dumps({"event": "start", "sequenceNumber": "1", "start": {
                "streamSid": "MZ1", "callSid": "CA1", "customParameters": {"token": token},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                "channels": 1}}}))
            await ws.send_str("[" * 3000)
            await ws.send_str(json.dumps({"event": "media", "sequenceNumber": "²",
                                          "media": {"payload": "", "chunk": "٣"}}))
            await ws.send_str(json.dumps({"event": "media", "media": {
                "payload": "", "chunk": "²"}}))
            await ws.ping()  # answered after the messages before it were read
            assert (await ws.receive()).type == aiohttp.WSMsgType.PONG
            async with session.get(url + "/api/health") as r:
                assert (await r.json())["calls"] == 1
            await ws.send_str(json.dumps({"event": "stop"}))
            await ws.receive()  # the server closes the stream
        for _ in range(50):
            async with session.get(url + "/api/health") as r:
                if (await r.json())["calls"] == 0:
                    break
            await asyncio.sleep(0.05)
        assert (await r.json())["calls"] == 0
