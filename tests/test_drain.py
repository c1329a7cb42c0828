"""Graceful drain (rejoinder.server.drain): the agent's goodbye cuts a reply in progress
as a barge-in does, is played whole, and the drain waits for live calls up to its
deadline before it says it (virtual time, fake providers); a real single-process
``rejoinder serve`` drains on SIGTERM with a real WebRTC caller on the line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from rejoinder.client.caller import CallFailed, place_call
from rejoinder.client.connection import pinned_host_addresses
from rejoinder.cluster.bus import free_port
from rejoinder.config import ServerOptions
from rejoinder.core.clock import Clock
from rejoinder.providers.base import ChatMessage
from rejoinder.server.drain import drain
from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack, run_virtual
from rejoinder.testing.loopback import Ear, script_audio, speak
from rejoinder.turn.engine import Conversation, TurnOptions

approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731  float sums of 20 ms steps
REPLY = "One two three four. Five six seven eight. Nine ten eleven twelve."


def test_a_goodbye_cuts_the_reply_where_the_caller_stopped_hearing_it_and_plays_whole():
    stt = FakeSTT(["count for me"], Latency(first_s=0.1))
    llm = FakeLLM([REPLY], Latency(first_s=0.21, per_item_s=0.1))
    tts = FakeTTS(Latency(first_s=0.05))

    async def main() -> tuple[Conversation, Ear, list[dict[str, Any]], float]:
        clock = Clock()
        events: list[dict[str, Any]] = []
        conv = Conversation(fake_stack(stt=stt, llm=llm, tts=tts), "Be brief.",
                            options=TurnOptions(max_reply_sentences=10),
                            events=events.append, clock=clock, call_id="t")
        ear = Ear(conv.playout, clock)
        ear_task = asyncio.create_task(ear.run())
        caller = asyncio.create_task(conv.run(speak(script_audio(
            [("silence", 0.5), ("speech", 1.0), ("silence", 8.0)]), clock)))
        await clock.sleep(3.0)  # the reply has played from 2.265 s
        await conv.say_goodbye("Goodbye now.")
        said_at = clock.now()
        caller.cancel()
        ear_task.cancel()
        await asyncio.gather(caller, ear_task, return_exceptions=True)
        return conv, ear, events, said_at

    conv, ear, events, said_at = run_virtual(main())
    assert [t["outcome"] for t in conv.traces] == ["interrupted", "completed"]
    assert tts.spoken[-1] == "Goodbye now."
    # 0.735 s of the reply's first clause (four words, 1 s) was heard: two words.
    assert [e for e in events if e["type"] == "interrupted"] == []  # not the caller's doing
    assert conv.history == [ChatMessage("user", "count for me"),
                            ChatMessage("assistant", "One two", interrupted=True),
                            ChatMessage("assistant", "Goodbye now.")]
    # The goodbye (two words, 0.5 s) starts 50 ms after the call to say it (TTS), and the
    # call returns once it has been played out, not when its audio was queued.
    goodbye = [t for t in ear.loud_times if t > 3.0]
    assert goodbye[0] == approx(3.065)
    assert len(goodbye) == 25
    assert said_at >= goodbye[-1]
    assert llm.cancelled == 1


def test_drain_waits_for_live_calls_up_to_its_deadline_then_says_goodbye():
    class Call:
        def __init__(self, server: Server, name: str, ends_at: float | None,
                     clock: Clock) -> None:
            self.id, self.server, self.clock = name, server, clock
            self.goodbye_at: float | None = None
            self.conversation = self
            if ends_at is not None:
                asyncio.get_running_loop().call_later(ends_at, self.end)

        async def say_goodbye(self, line: str) -> None:
            self.goodbye_at = self.clock.now()
            await self.clock.sleep(1.0)

        def end(self) -> None:
            self.server.calls.pop(self.id, None)

        async def close(self) -> None:
            self.end()

    class Server:
        def __init__(self) -> None:
            self.calls: dict[str, Call] = {}
            self.draining = False

    async def main() -> tuple[Server, dict[str, Call], float]:
        clock = Clock()
        server = Server()
        calls = {n: Call(server, n, ends_at, clock)
                 for n, ends_at in (("short", 2.0), ("long", None))}
        server.calls.update(calls)
        await drain(server, 5.0, "Bye.", clock)  # type: ignore[arg-type]
        return server, calls, clock.now()

    server, calls, ended_at = run_virtual(main())
    assert server.draining and not server.calls
    assert calls["short"].goodbye_at is None  # ended on its own within the deadline
    assert calls["long"].goodbye_at == approx(5.0)
    assert ended_at == approx(6.0)  # after the goodbye was said


# -- a real server ---------------------------------------------------------------------------
DRAIN_S = 4.0
GOODBYE = ServerOptions().drain_goodbye


async def _health(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with http.get(f"{url}/api/health") as r:
            body: dict[str, Any] = await r.json()
            return body
    except aiohttp.ClientError:
        return None


async def _offer(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    """A real offer, as a browser would send it."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        with pinned_host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        async with http.post(f"{url}/api/offer", json={
                "sdp": pc.localDescription.sdp, "type": "offer"}) as r:
            return r.status, await r.json()
    finally:
        await pc.close()


@pytest.mark.slow  # a real server process and a real WebRTC call of about 10 s
async def test_sigterm_drains_a_single_process_server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "REJOINDER_SERVER__DRAIN_S": str(DRAIN_S)}
    server = subprocess.Popen(  # noqa: ASYNC220 (started once, waited on at the end)
        [sys.executable, "-m", "rejoinder", "serve", "--stack", "fake", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "serve.log", "wb"))  # noqa: SIM115, ASYNC230
    events: list[tuple[float, dict[str, Any]]] = []
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):
                while True:
                    if await _health(http, url):
                        break
                    await asyncio.sleep(0.2)
            # An utterance every 3.8 s for 19 s: more than the drain lets the call have.
            audio = script_audio([("silence", 0.5), *[part for _ in range(5) for part in
                                                      (("speech", 0.8), ("silence", 3.0))]])
            answered = asyncio.Event()

            def on_event(event: dict[str, Any]) -> None:
                events.append((time.monotonic(), event))
                if event["type"] == "trace":
                    answered.set()

            caller = asyncio.create_task(place_call(url, audio, tail_s=5, on_event=on_event))
            async with asyncio.timeout(30):
                await answered.wait()  # the call is live: a turn answered
            server.send_signal(signal.SIGTERM)
            term_at = time.monotonic()
            await asyncio.sleep(0.3)
            health = await _health(http, url)
            assert health is not None and health["status"] == "draining"
            assert health["calls"] == 1
            status, body = await _offer(http, url)  # no new call
            assert (status, body["code"]) == (503, "draining")
            with pytest.raises(CallFailed) as info:
                await caller  # the server ends the call after its goodbye
            assert "closed the call" in str(info.value)
            code = await asyncio.to_thread(server.wait, 15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()  # noqa: ASYNC220
    assert code == 0
    # The live call went on: a turn answered after SIGTERM, before the goodbye.
    # The live call went on: a turn answered after SIGTERM, before the goodbye.
    last = max(int(e["turn"]) for _, e in events if e["type"] == "agent")
    clauses = [(t, e["text"]) for t, e in events if e["type"] == "agent" and e["turn"] == last]
    assert " ".join(text for _, text in clauses) == GOODBYE  # said clause by clause
    goodbye_at = clauses[0][0]
    assert any(term_at < t < goodbye_at for t, e in events if e["type"] == "trace")
    # It was said whole before the call ended.
    assert [e["outcome"] for _, e in events if e["type"] == "trace" and e["turn"] == last] \
        == ["completed"]
    # The goodbye came at the drain's deadline, not before.
    assert DRAIN_S - 0.3 < goodbye_at - term_at < DRAIN_S + 1.5
