"""A real ``rejoinder serve --workers 2 --stack fake`` with a real nats-server and two real
WebRTC callers: a worker killed -9 mid-call harms only its own call, is restarted, the
turns its call completed are in the store, and its call row is closed (worker_lost)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from rejoinder.client.caller import CallFailed, place_call
from rejoinder.cluster.bus import free_port
from rejoinder.testing.loopback import script_audio

pytestmark = pytest.mark.slow

UTTERANCES = 5
AUDIO = script_audio([("silence", 0.5), *[part for _ in range(UTTERANCES) for part in
                                          (("speech", 0.8), ("silence", 3.0))]])


async def _health(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/health") as r:
        body: dict[str, Any] = await r.json()
        return body


async def _until(check: Any, limit_s: float, what: str) -> Any:
    async with asyncio.timeout(limit_s):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.2)
    raise AssertionError(what)


async def test_a_worker_killed_mid_call_ends_only_its_own_call(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"),
           "REJOINDER_SERVER__DRAIN_S": "2"}
    server = subprocess.Popen(  # noqa: ASYNC220 (started once, waited on at the end)
        [sys.executable, "-m", "rejoinder", "serve", "--workers", "2", "--stack", "fake",
         "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "serve.log", "wb"))  # noqa: SIM115, ASYNC230
    try:
        async with aiohttp.ClientSession() as http:
            async def two_workers() -> Any:
                try:
                    h = await _health(http, url)
                except aiohttp.ClientError:
                    return None
                return h if len(h["workers"]) == 2 else None
            await _until(two_workers, 60, "two workers never came up")

            traces: list[list[dict[str, Any]]] = [[], []]

            def on_event(i: int) -> Any:
                def seen(event: dict[str, Any]) -> None:
                    if event.get("type") == "trace":
                        traces[i].append(event)
                return seen

            async def call(i: int) -> Any:
                try:
                    return await place_call(url, AUDIO, tail_s=5, on_event=on_event(i))
                except CallFailed as exc:
                    return exc

            calls = [asyncio.create_task(call(i)) for i in range(2)]
            await _until(lambda: asyncio.sleep(0, all(len(t) >= 2 for t in traces)), 30,
                         "both calls should complete two turns")
            health = await _health(http, url)
            assert sorted(w["calls"] for w in health["workers"]) == [1, 1]  # one each
            victim = next(w for w in health["workers"] if w["worker"] == "w1")
            os.kill(victim["pid"], signal.SIGKILL)
            done_at_kill = [list(t) for t in traces]
            results = await asyncio.gather(*calls)

            # The restarted w1 is back in rotation with a new process.
            async def restarted() -> Any:
                h = await _health(http, url)
                return any(w["worker"] == "w1" and w["pid"] != victim["pid"]
                           for w in h["workers"])
            await _until(restarted, 30, "the supervisor did not restart w1")

            answered = [len(t) for t in traces]
            killed = answered.index(min(answered))
            other = 1 - killed
            assert answered[other] == UTTERANCES  # every turn answered
            assert not isinstance(results[other], CallFailed)
            assert answered[killed] < UTTERANCES
            # Every turn the killed call completed is in the store, through JetStream.
            call_id = str(done_at_kill[killed][0]["call_id"])

            async def stored() -> Any:
                async with http.get(f"{url}/api/calls/{call_id}") as r:
                    if r.status != 200:
                        return None
                    body = await r.json()
                return body if len(body["turns"]) >= len(done_at_kill[killed]) else None
            record = await _until(stored, 15, "the killed call's turns are not stored")
            assert [t["turn"] for t in record["turns"]][:len(done_at_kill[killed])] == \
                [e["turn"] for e in done_at_kill[killed]]
            # Its call row is closed by the gateway, which saw the worker come back anew.
            async def closed() -> Any:
                async with http.get(f"{url}/api/calls/{call_id}") as r:
                    body = await r.json()
                return body if body["ended_at"] else None
            assert (await _until(closed, 15, "the killed call has no end"))["outcome"] == \
                "worker_lost"
            # The call that went on is stored whole: every turn, and its end.
            other_id = str(traces[other][0]["call_id"])

            async def stored_whole() -> Any:
                async with http.get(f"{url}/api/calls/{other_id}") as r:
                    if r.status != 200:
                        return None
                    body = await r.json()
                return body if len(body["turns"]) == UTTERANCES and body["ended_at"] else None
            await _until(stored_whole, 15, "the call that went on is not stored whole")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert code == 0
