"""The server's call records come from the store: GET /api/calls/{id}, DELETE on request,
and a real server killed with -9 mid-call keeps every finished turn."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from rejoinder.config import Config
from rejoinder.server.app import Server
from rejoinder.store import Recorder, Store
from rejoinder.testing import fake_stack


@pytest.fixture
async def api(tmp_path) -> AsyncIterator[tuple[TestClient, Server]]:  # type: ignore[type-arg]
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/calls.db")
    await store.migrate()
    recorder = Recorder(store, owns_store=True)
    recorder.start()
    server = Server(Config(), fake_stack(), recorder)
    client = TestClient(TestServer(server.app(), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, server
    finally:
        await client.close()
        await recorder.close()


def _one_turn(server: Server, call_id: str) -> None:
    """What a call's conversation sends for one finished turn, through the server's hook."""
    assert server.recorder is not None
    record = server.recorder.call(call_id, transport="webrtc", agent="Rejoinder")
    record.begin()
    for e in ({"type": "user", "turn": 1, "text": "my number is 555 123 4567"},
              {"type": "agent", "turn": 1, "text": "Thanks."},
              {"type": "trace", "turn": 1, "outcome": "completed",
               "ms_after_speech_end": {"speech_end": 0.0, "first_audio_sent": 420.0}}):
        record.on_event(e)
    record.end("ended")


async def test_a_call_record_is_served_from_the_store_and_deleted_on_request(api) -> None:
    client, server = api
    _one_turn(server, "abc123")
    resp = await client.get("/api/calls/abc123")
    assert resp.status == 200
    body = await resp.json()
    assert (body["call_id"], body["active"], body["outcome"]) == ("abc123", False, "ended")
    assert [t["user_text"] for t in body["turns"]] == ["my number is [phone number]"]
    assert body["turns"][0]["ms_after_speech_end"] == {"first_audio_sent": 420.0}

    resp = await client.delete("/api/calls/abc123")
    assert resp.status == 200 and (await resp.json())["deleted"] is True
    assert (await client.get("/api/calls/abc123")).status == 404
    resp = await client.delete("/api/calls/abc123")
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
async def test_kill_9_of_a_real_server_mid_call_keeps_the_finished_turns(tmp_path) -> None:
    from rejoinder.client.caller import place_call
    from rejoinder.testing.loopback import script_audio

    port, db = _free_port(), tmp_path / "calls.db"
    env = {**os.environ, "REJOINDER_SERVER__PORT": str(port),
           "REJOINDER_STORE__PATH": str(db), "REJOINDER_TURN__MODEL": "none"}
    server = subprocess.Popen(  # noqa: ASYNC220 (started once, never waited on the loop)
        [sys.executable, "-m", "rejoinder", "serve", "--stack", "fake"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    seen: list[dict[str, object]] = []
    killed = asyncio.Event()

    def on_event(event: dict[str, object]) -> None:
        seen.append(event)
        if event.get("type") == "trace" and event.get("turn") == 2:
            # Two turns done; the caller is speaking the third: kill the server now.
            asyncio.get_running_loop().call_later(1.0, _kill, server, killed)

    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(url + "/api/health") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        audio = script_audio([("silence", 0.5), ("speech", 0.8), ("silence", 2.5),
                              ("speech", 0.8), ("silence", 2.5), ("speech", 3.0),
                              ("silence", 3.0)])
        call = asyncio.create_task(place_call(url, audio, tail_s=2, on_event=on_event))
        await asyncio.wait_for(killed.wait(), 60)
        call.cancel()
        with pytest.raises(BaseException):  # noqa: B017 (the server is gone: any failure)
            await call
    finally:
        server.kill()
        server.wait(30)
    assert server.returncode == -signal.SIGKILL
    call_ids = {e.get("call_id") for e in seen if e.get("type") == "trace"}
    assert len(call_ids) == 1
    store = Store(f"sqlite+aiosqlite:///{db}")
    await store.migrate()
    record = await store.get_call(str(call_ids.pop()))
    await store.close()
    assert record is not None and record["ended_at"] is None  # it never ended
    turns = record["turns"]
    assert isinstance(turns, list)
    # The two finished turns (each cut short by the caller's next utterance), not the third.
    assert [t["turn"] for t in turns] == [1, 2]
    assert [t["user_text"] for t in turns] == ["(fake transcript)"] * 2
    assert all(t["outcome"] in ("completed", "interrupted") for t in turns)


def _kill(process: subprocess.Popen[bytes], killed: asyncio.Event) -> None:
    os.kill(process.pid, signal.SIGKILL)
    killed.set()
