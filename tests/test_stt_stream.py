"""Streaming speech to text: the simulated cloud's ``GET /v1/stt/stream`` and the remote
provider's session over it, served in the test's own loop, on real clocks (bounds generous
enough for a loaded machine, tight enough to catch a wrong profile value)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from rejoinder.cloudsim.faults import FaultDice
from rejoinder.cloudsim.profile import Profile, load_profile
from rejoinder.cloudsim.service import CloudSim
from rejoinder.core.audio import FRAME_SAMPLES, PCM, SAMPLE_RATE
from rejoinder.core.errors import ProviderStreamError, ProviderTimeout, ProviderUnavailable
from rejoinder.providers.base import STTStream
from rejoinder.providers.fallback import Backend, FallbackSTT
from rejoinder.providers.remote import RemoteSTT
from rejoinder.testing import FakeSTT
from rejoinder.testing.loopback import tone

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE
WORDS = "could you tell me what is free on tuesday for a haircut please"
# Partials every 0.1 s, 0.1 s behind the audio; a known text grows at 5 words a second.
QUICK = {"stt.partial_interval_s": 0.1, "stt.partial_lag_s": 0.1, "stt.words_per_s": 5.0}

Serve = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts a simulated cloud with ``cloud-typical`` and the overrides given."""
    runners: list[web.AppRunner] = []

    async def start(**overrides: object) -> str:
        profile = load_profile("cloud-typical").with_overrides({**QUICK, **overrides})
        runner = web.AppRunner(CloudSim(profile).app(), handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def speak(seconds: float, push: Callable[[PCM], Awaitable[None]]) -> float:
    """Push ``seconds`` of speech in 20 ms frames at the pace it is spoken; the end time."""
    audio, start = tone(seconds), time.perf_counter()
    for k, i in enumerate(range(0, len(audio), FRAME_SAMPLES)):
        await push(audio[i:i + FRAME_SAMPLES])
        await asyncio.sleep(max(0.0, start + (k + 1) * FRAME_S - time.perf_counter()))
    return time.perf_counter()


# --- the endpoint ------------------------------------------------------------------------------

async def test_partials_arrive_while_audio_streams_and_a_final_after_each_finalize(
        serve: Serve) -> None:
    url = await serve()
    partials: list[tuple[float, str]] = []
    finals: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url + "/v1/stt/stream", params={"sample_rate": "16000", "transcript": WORDS}) as ws:

        async def read() -> None:
            async for msg in ws:
                message = json.loads(msg.data)
                arrived = (time.perf_counter(), message["text"])
                if message["type"] == "partial":
                    partials.append(arrived)
                else:
                    finals.put_nowait(arrived)

        reader = asyncio.create_task(read())
        start = time.perf_counter()
        end = await speak(1.2, lambda f: ws.send_bytes(f.astype("<i2").tobytes()))
        await ws.send_str('{"type": "finalize"}')
        first = await asyncio.wait_for(finals.get(), 2.0)
        # The caller goes on: the next final is of the whole utterance.
        await ws.send_bytes(tone(0.5).astype("<i2").tobytes())
        await ws.send_str(json.dumps({"type": "finalize"}))
        second = await asyncio.wait_for(finals.get(), 2.0)
        await ws.close()
        await reader
    assert first[1] == second[1] == WORDS
    assert 0.14 <= first[0] - end <= 0.35  # stt.final_s after the finalize
    during = [(t - start, text) for t, text in partials if t <= end]
    assert len(during) >= 5  # about one every 0.1 s of the 1.2 s
    texts = [text for _, text in during]
    assert all(b.startswith(a) and len(b) > len(a)
               for a, b in zip(texts, texts[1:], strict=False))
    for t, text in during:  # never more words than the audio 0.1 s earlier holds
        assert len(text.split()) <= max(0.0, t - 0.1) * 5 + 1
    assert WORDS.startswith(texts[-1]) and len(texts[-1].split()) >= 4


async def test_without_a_transcript_the_text_is_the_audio_length(serve: Serve) -> None:
    url = await serve(**{"stt.final_s": 0.0})
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url + "/v1/stt/stream") as ws:
        await ws.send_bytes(np.zeros(SAMPLE_RATE, "<i2").tobytes())  # 1 s at 16 kHz
        await ws.send_str('{"type": "finalize"}')
        seen = []
        async for msg in ws:
            seen.append(json.loads(msg.data))
            if seen[-1]["type"] == "final":
                break
    assert seen[-1] == {"type": "final", "text": "utterance of 1.0 seconds"}


async def test_bad_requests_and_messages_get_a_clear_error(serve: Serve) -> None:
    url = await serve()
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/v1/stt/stream") as resp:  # no upgrade
            assert resp.status == 400
            assert "WebSocket" in (await resp.json())["error"]["message"]
        async with http.get(url + "/v1/stt/stream", params={"sample_rate": "fast"}) as resp:
            assert resp.status == 400
            assert "sample_rate" in (await resp.json())["error"]["message"]
        for bad, words in ((b"\x00\x00\x00", "whole PCM16 samples"),
                           ("hello", '{"type": "finalize"}'),
                           ('{"type": "flush"}', '{"type": "finalize"}')):
            async with http.ws_connect(url + "/v1/stt/stream") as ws:
                await (ws.send_bytes(bad) if isinstance(bad, bytes) else ws.send_str(bad))
                msg = await ws.receive()
                assert json.loads(msg.data)["type"] == "error"
                assert words in json.loads(msg.data)["message"]
                assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == aiohttp.WSCloseCode.UNSUPPORTED_DATA


# --- the provider's session --------------------------------------------------------------------

async def test_the_session_reads_partials_and_finals_and_opens_a_socket_per_utterance(
        serve: Serve) -> None:
    url = await serve(**{"stt.transcript": WORDS})
    stt = RemoteSTT(url, streaming=True)
    session = stt.session()
    seen: list[str] = []

    async def push(frame: PCM) -> None:
        started = time.perf_counter()
        await session.push(frame, True)
        assert time.perf_counter() - started < 0.005  # never waits for the network
        seen.append(session.partial())

    try:
        await speak(1.0, push)
        assert seen[0] == "" and WORDS.startswith(seen[-1]) and len(seen[-1].split()) >= 3
        started = time.perf_counter()
        assert await session.finish() == WORDS
        assert 0.14 <= time.perf_counter() - started <= 0.35
        started = time.perf_counter()
        assert await session.finish() == WORDS  # no speech since: no new request
        assert time.perf_counter() - started < 0.01
        await session.push(np.zeros(FRAME_SAMPLES, np.int16), False)
        assert await session.finish() == WORDS  # silence alone: the same
        session.reset()
        assert session.partial() == ""
        await session.push(tone(0.2), True)  # the next utterance: a new socket
        assert await session.finish() == WORDS
        session.reset()
    finally:
        await stt.close()


def _seed_where(profile: Profile, faults: list[str | None]) -> int:
    """A seed whose first STT draws are ``faults``, in order."""
    for seed in range(1000):
        dice = FaultDice(profile.stt, seed)
        if [dice.roll()[0] for _ in faults] == faults:
            return seed
    raise AssertionError("no such seed")


async def test_a_dropped_socket_fails_its_utterance_and_the_next_one_reconnects(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    drops = {"stt.drop_rate": 0.5, "stt.transcript": WORDS}
    seed = _seed_where(load_profile("cloud-typical").with_overrides(drops), ["drop", None])
    url = await serve(**drops, seed=seed)
    stt = RemoteSTT(url, streaming=True)
    session = stt.session()
    try:
        await session.push(tone(0.3), True)
        with pytest.raises(ProviderStreamError, match="closed the stream") as failed:
            await session.finish()
        assert failed.value.kind == "stt"
        with pytest.raises(ProviderStreamError):  # the same utterance: failed at once
            await session.finish()
        session.reset()
        await session.push(tone(0.3), True)
        assert await session.finish() == WORDS
        session.reset()
    finally:
        await stt.close()
    assert WORDS not in caplog.text and "tuesday" not in caplog.text


async def test_an_unanswered_stream_times_out(serve: Serve) -> None:
    url = await serve(**{"stt.timeout_rate": 1.0})
    stt = RemoteSTT(url, streaming=True)
    stt.stream_idle_timeout_s = 0.3
    session = stt.session()
    try:
        await speak(0.3, lambda f: session.push(f, True))
        assert session.partial() == ""  # a hung service sends nothing
        started = time.perf_counter()
        with pytest.raises(ProviderTimeout) as timed_out:
            await session.finish()
        assert timed_out.value.kind == "stt"
        assert 0.29 <= time.perf_counter() - started <= 0.6
        session.reset()
    finally:
        await stt.close()


async def test_a_service_that_cannot_be_reached_or_refuses_fails_the_finish() -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=503, text="busy")

    app = web.Application()
    app.router.add_get("/v1/stt/stream", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    busy = RemoteSTT(f"http://127.0.0.1:{runner.addresses[0][1]}", streaming=True)
    gone = RemoteSTT("http://127.0.0.1:9", streaming=True)
    try:
        for stt, match in ((busy, "HTTP 503"), (gone, "connection")):
            session = stt.session()
            started = time.perf_counter()
            await session.push(tone(0.1), True)
            assert time.perf_counter() - started < 0.005
            with pytest.raises(ProviderUnavailable, match=match):
                await session.finish()
            session.reset()
    finally:
        await busy.close()
        await gone.close()
        await runner.cleanup()


async def test_a_fallback_chain_reads_the_streams_partials_and_replaces_a_dropped_one(
        serve: Serve) -> None:
    url = await serve(**{"stt.drop_rate": 1.0, "stt.transcript": WORDS})
    lead = RemoteSTT(url, streaming=True)
    chain = FallbackSTT([Backend("cloud", lead), Backend("spare", FakeSTT(["from the spare"]))])
    session: STTStream = chain.session()
    try:
        await speak(0.8, lambda f: session.push(f, True))
        assert WORDS.startswith(session.partial()) and session.partial()  # the lead's words
        assert await session.finish() == "from the spare"  # the same audio, whole
        assert chain.stats.counts[("fallback", "stt", "cloud", "failed")] == 1
        session.reset()
    finally:
        await chain.close()


def test_streaming_needs_a_remote_provider() -> None:
    from rejoinder.config import STTOptions
    from rejoinder.core.errors import ConfigError

    with pytest.raises(ConfigError, match="stt.streaming"):
        STTOptions(streaming=True)
    assert STTOptions(provider="remote", url="http://x", streaming=True).streaming


# --- on the cloud stack: a read-only tool read ahead from the partial words ---------------------

async def test_on_the_cloud_stack_a_read_only_tool_is_prefetched_from_the_partials_a_write_never(
        serve: Serve) -> None:
    from rejoinder.providers.base import Stack
    from rejoinder.providers.openai.llm import OpenAILLM
    from rejoinder.providers.remote import RemoteTTS
    from rejoinder.testing import FakeVAD
    from rejoinder.testing.loopback import converse
    from rejoinder.tools import Toolbox, ToolCall, tool

    started: dict[str, float] = {}

    @tool(side_effects=False, timeout_s=5.0)
    async def find_slots(day: str) -> list[str]:
        """Free slots on a day."""
        started["find_slots"] = time.perf_counter()
        await asyncio.sleep(0.3)
        return [f"{day} 10:00"]

    @tool(side_effects=True, timeout_s=5.0)
    async def book(day: str) -> dict[str, str]:
        """Book the slot."""
        started["book"] = time.perf_counter()
        await asyncio.sleep(0.3)
        return {"reference": "BK-1"}

    class AskedLLM(OpenAILLM):
        """Notes when the model named each call."""

        asked: list[tuple[float, str]] = []

        async def _stream(self, messages, tools=()):  # type: ignore[no-untyped-def]
            async for item in super()._stream(messages, tools):
                if isinstance(item, ToolCall):
                    self.asked.append((time.perf_counter(), item.name))
                yield item

    calls = [{"name": "find_slots", "arguments": {"day": "tuesday"}},
             {"name": "book", "arguments": {"day": "tuesday"}}]
    url = await serve(**{"stt.transcript": WORDS, "stt.words_per_s": 10.0,
                         "llm.tool_calls": json.dumps(calls), "llm.reply": "Done."})
    llm = AskedLLM(url + "/v1", "cloudsim")
    stack = Stack(vad=FakeVAD(), stt=RemoteSTT(url, streaming=True), llm=llm,
                  tts=RemoteTTS(url))
    stack.tools = Toolbox.of([find_slots, book], filler_after_s=0.0)
    try:
        begin = time.perf_counter()
        # Two caller turns of 1.6 s, the second once the first reply ("Done.") is heard.
        conv, _, events = await converse(stack, [
            ("silence", 0.3), ("speech", 1.6), ("silence", 1.5), ("speech", 1.6)], extra_s=1.0)
    finally:
        await stack.close()
    first_end, second_end = begin + 1.9, begin + 5.0
    # find_slots ran while the caller still spoke (the LLM read their partial words),
    # and the confirmed reply took its result: a hit.
    assert started["find_slots"] < first_end
    done = [(e["turn"], e["name"], e["prefetched"]) for e in events
            if e["type"] == "tool" and e["status"] != "started"]
    assert done == [(1, "find_slots", True), (2, "book", False)]
    assert conv.stats["prefetch_hits"] == 1 and conv.stats["prefetch_misses"] == 0
    # book changes something: the model named it from the second turn's partial words
    # too, yet it waited for the confirmed turn.
    assert any(name == "book" and first_end < t < second_end for t, name in llm.asked)
    assert started["book"] > second_end
