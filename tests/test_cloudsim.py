"""The simulated cloud, run as a real child process, seen through the real HTTP clients.

Timing bounds are on real clocks (this is what the benchmark relies on), generous enough for
a loaded CI machine but tight enough to catch a wrong profile or a lost ~100 ms.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from rejoinder.cloudsim import load_profile, running_cloudsim, start_cloudsim
from rejoinder.cloudsim.faults import FaultDice
from rejoinder.cloudsim.profile import DEFAULT_REPLY, LLMProfile, Profile
from rejoinder.cloudsim.service import build_parser, profile_from_args
from rejoinder.cloudsim.stack import cloud_stack
from rejoinder.core.audio import SAMPLE_RATE, rms_dbfs
from rejoinder.core.errors import (
    ConfigError,
    ProviderError,
    ProviderStreamError,
    ProviderTimeout,
    ProviderUnavailable,
)
from rejoinder.providers.base import ChatMessage
from rejoinder.providers.openai.llm import OpenAILLM
from rejoinder.providers.remote import RemoteSTT, RemoteTTS

HI = [ChatMessage("user", "Hi")]


@pytest.fixture(scope="module")
def cloud() -> Iterator[str]:
    with running_cloudsim("cloud-typical") as url:
        yield url


@pytest.fixture(scope="module")
def dropping() -> Iterator[str]:
    # overrides typed or as command-line text
    with running_cloudsim("fast", llm_drop_rate="1", stt_drop_rate=1, tts_drop_rate=1.0) as url:
        yield url


@pytest.fixture(scope="module")
def hanging() -> Iterator[str]:
    with running_cloudsim("fast", llm_timeout_rate=1, stt_timeout_rate=1,
                          tts_timeout_rate=1) as url:
        yield url


# --- latency as the clients see it -------------------------------------------------------------

async def test_llm_first_token_after_ttft_then_50_tokens_per_second(cloud: str) -> None:
    p = load_profile("cloud-typical").llm
    n = len(p.reply.split())
    llm = OpenAILLM(cloud + "/v1", "cloudsim")
    try:
        for _ in range(2):  # the first request also opens the connection
            start = time.perf_counter()
            arrivals, text = [], ""
            async for delta in llm.stream(HI):
                arrivals.append(time.perf_counter() - start)
                text += delta
            assert text == p.reply == DEFAULT_REPLY
            assert 0.24 <= arrivals[0] <= 0.40
            # token i leaves at ttft + i / tokens_per_s: never earlier, and ~20 ms apart
            for i, t in enumerate(arrivals):
                assert t >= p.ttft_s + i * p.token_interval_s - 0.005
            assert arrivals[-1] <= p.ttft_s + (n - 1) * p.token_interval_s + 0.15
            assert 0.015 <= (arrivals[-1] - arrivals[0]) / (n - 1) <= 0.032
    finally:
        await llm.close()


async def test_stt_answers_final_s_after_the_upload(cloud: str) -> None:
    stt = RemoteSTT(cloud)
    echo = RemoteSTT(cloud, headers={"X-Transcript": "book a table for two"})
    try:
        await stt.warm()
        took = []
        for _ in range(2):
            start = time.perf_counter()
            text = await stt.transcribe(np.zeros(SAMPLE_RATE, dtype=np.int16))
            took.append(time.perf_counter() - start)
            assert text == "utterance of 1.0 seconds"
        assert min(took) >= 0.145 and max(took) <= 0.30
        assert await echo.transcribe(np.zeros(2300 * 16, dtype=np.int16)) == \
            "book a table for two"
    finally:
        await stt.close()
        await echo.close()


async def test_tts_first_audio_after_ttfb_then_paced_by_rtf(cloud: str) -> None:
    tts = RemoteTTS(cloud)  # 24 kHz, as the profile
    p = load_profile("cloud-typical").tts
    text = "one two three four five"  # 1.5 s of audio: 15 chunks of 0.1 s
    chunk = round(p.chunk_s * tts.sample_rate)
    try:
        start = time.perf_counter()
        got: list[np.ndarray] = []
        received = 0
        async for pcm in tts.synthesize(text):
            t = time.perf_counter() - start
            received += len(pcm)
            # chunk k (0-based) is rendered at ttfb + k * chunk_s * rtf, never earlier
            k = math.ceil(received / chunk) - 1
            assert t >= p.ttfb_s + k * p.chunk_s * p.rtf - 0.005
            if not got:
                assert t <= 0.25
            got.append(pcm)
        elapsed = time.perf_counter() - start
    finally:
        await tts.close()
    audio = np.concatenate(got)
    duration = len(audio) / tts.sample_rate
    assert duration == pytest.approx(5 * p.seconds_per_word)
    assert audio.dtype == np.int16 and rms_dbfs(audio) > -20  # a tone, not silence
    expected = p.ttfb_s + (duration - p.chunk_s) * p.rtf  # 0.1 + 1.4 * 0.2 = 0.38 s
    assert expected - 0.005 <= elapsed <= expected + 0.15


# --- injected failures ---------------------------------------------------------------------------

async def test_dropped_streams_become_stream_errors(dropping: str) -> None:
    llm, stt, tts = OpenAILLM(dropping + "/v1", "m"), RemoteSTT(dropping), RemoteTTS(dropping)
    try:
        deltas: list[str] = []
        with pytest.raises(ProviderStreamError):
            async for delta in llm.stream(HI):
                deltas.append(delta)
        assert 0 < len(deltas) < len(DEFAULT_REPLY.split())  # cut midway
        with pytest.raises(ProviderStreamError):
            await stt.transcribe(np.zeros(1600, dtype=np.int16))
        samples = 0
        with pytest.raises(ProviderStreamError):
            async for pcm in tts.synthesize("one two three four"):
                samples += len(pcm)
        assert 0 < samples < round(4 * 0.3 * tts.sample_rate)  # partial audio
    finally:
        for p in (llm, stt, tts):
            await p.close()


async def test_unanswered_requests_become_timeouts(hanging: str) -> None:
    llm = OpenAILLM(hanging + "/v1", "m", first_token_timeout_s=0.3)
    stt = RemoteSTT(hanging, timeout_s=0.3)
    tts = RemoteTTS(hanging, first_audio_timeout_s=0.3)
    try:
        start = time.perf_counter()
        with pytest.raises(ProviderTimeout):
            [d async for d in llm.stream(HI)]
        with pytest.raises(ProviderTimeout):
            await stt.transcribe(np.zeros(1600, dtype=np.int16))
        with pytest.raises(ProviderTimeout):
            [c async for c in tts.synthesize("hello")]
        assert time.perf_counter() - start < 1.5
    finally:
        for p in (llm, stt, tts):
            await p.close()
    async with aiohttp.ClientSession() as session, session.get(hanging + "/health") as resp:
        assert resp.status == 200  # the hung handlers went away with their clients


def test_failure_draws_are_deterministic_per_seed_and_service() -> None:
    profile = LLMProfile(timeout_rate=0.2, drop_rate=0.3)
    a, b = FaultDice(profile, seed=7), FaultDice(profile, seed=7)
    first = [a.roll() for _ in range(2000)]
    assert first == [b.roll() for _ in range(2000)]
    faults = [f for f, _ in first]
    assert faults.count("timeout") / 2000 == pytest.approx(0.2, abs=0.03)
    assert faults.count("drop") / 2000 == pytest.approx(0.3, abs=0.03)
    other = FaultDice(profile, seed=8)
    assert [other.roll() for _ in range(50)] != first[:50]


# --- the HTTP surface ---------------------------------------------------------------------------

async def test_health_and_non_streaming_requests(cloud: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(cloud + "/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["profile"]["llm"]["ttft_s"] == 0.25
        body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(cloud + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 400
        async with session.post(cloud + "/v1/stt", data=b"\x00\x00\x00") as resp:
            assert resp.status == 400  # half a sample


async def test_cloud_stack_smoke(cloud: str) -> None:
    stack = await asyncio.to_thread(cloud_stack, cloud)
    try:
        await stack.warm(HI)
        vad = stack.vad.stream()
        assert 0.0 <= vad.push(np.zeros(1024, dtype=np.int16)) <= 1.0
        assert await stack.stt.transcribe(np.zeros(8000, dtype=np.int16)) == \
            "utterance of 0.5 seconds"
        reply = "".join([d async for d in stack.llm.stream(HI)])
        assert reply == DEFAULT_REPLY
        clause = reply.split(",")[0] + ","  # "Sure,"
        audio = np.concatenate([c async for c in stack.tts.synthesize(clause)])
        assert stack.tts.sample_rate == 24_000
        assert len(audio) == round(0.3 * 24_000) and rms_dbfs(audio) > -20
    finally:
        await stack.close()


# --- the generic TTS client against a hand-written server ---------------------------------------

@pytest.fixture
async def pcm_server() -> AsyncIterator[tuple[str, dict[str, object]]]:
    """Serves a known PCM16 ramp in awkward pieces (odd byte counts), or misbehaves."""
    control: dict[str, object] = {"pieces": [3, 5, 1, 991], "rate": "24000", "status": 200}

    async def tts(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        control["asked"] = body
        if control["status"] != 200:
            return web.Response(status=int(str(control["status"])), text="voice unavailable")
        data = np.arange(-500, 500, dtype="<i2").tobytes() + bytes(control.get("tail", b""))
        resp = web.StreamResponse(headers={"X-Sample-Rate": str(control["rate"])})
        await resp.prepare(request)
        at = 0
        for size in [*control["pieces"], len(data)]:  # type: ignore[misc]
            if at < len(data):
                await resp.write(data[at:at + size])
                at += size
                await asyncio.sleep(0.005)  # separate network chunks
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/tts", tts)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", control
    await runner.cleanup()


async def test_remote_tts_reassembles_samples_split_across_chunks(
        pcm_server: tuple[str, dict[str, object]], caplog: pytest.LogCaptureFixture) -> None:
    url, control = pcm_server
    tts = RemoteTTS(url, sample_rate=24_000, api_key="k")
    try:
        chunks = [c async for c in tts.synthesize("Hello.")]
        assert control["asked"] == {"text": "Hello.", "sample_rate": 24_000}
        assert len(chunks) > 1 and all(c.dtype == np.int16 for c in chunks)
        assert np.array_equal(np.concatenate(chunks), np.arange(-500, 500, dtype=np.int16))
        control["tail"] = b"\x01"  # a dangling half sample at the end
        with caplog.at_level(logging.WARNING):
            audio = np.concatenate([c async for c in tts.synthesize("Hi.")])
        assert len(audio) == 1000 and "mid-sample" in caplog.text
        control["rate"] = "16000"
        with pytest.raises(ProviderError, match="16000 Hz"):
            [c async for c in tts.synthesize("Hi.")]
        control["status"] = 503
        with pytest.raises(ProviderError, match="HTTP 503.*voice unavailable"):
            [c async for c in tts.synthesize("Hi.")]
    finally:
        await tts.close()


async def test_remote_clients_translate_connection_failures() -> None:
    stt, tts = RemoteSTT("http://127.0.0.1:9"), RemoteTTS("http://127.0.0.1:9")
    try:
        with pytest.raises(ProviderUnavailable, match="connection"):
            await stt.transcribe(np.zeros(160, dtype=np.int16))
        with pytest.raises(ProviderUnavailable):
            [c async for c in tts.synthesize("Hi.")]
    finally:
        await stt.close()
        await tts.close()


# --- profiles -----------------------------------------------------------------------------------

def test_shipped_profiles() -> None:
    typical = load_profile("cloud-typical")
    assert (typical.stt.final_s, typical.llm.ttft_s, typical.llm.tokens_per_s) == \
        (0.15, 0.25, 50.0)
    assert (typical.tts.ttfb_s, typical.tts.rtf, typical.tts.sample_rate) == (0.1, 0.2, 24_000)
    assert typical.llm.drop_rate == typical.tts.timeout_rate == typical.llm.jitter_s == 0.0
    fast = load_profile("fast")
    assert fast.llm.ttft_s == 0 and fast.llm.token_interval_s == 0 and fast.tts.rtf == 0


@pytest.mark.parametrize(("toml", "field"), [
    ("[llm]\nttft_s = -1", "llm.ttft_s"),
    ("[llm]\ntokens_per_s = 0", "llm.tokens_per_s"),
    ("[llm]\ntokens_per_s = \"fast\"", "llm.tokens_per_s"),
    ("[stt]\ntimeout_rate = 1.5", "stt.timeout_rate"),
    ("[tts]\ntimeout_rate = 0.6\ndrop_rate = 0.6", "tts.drop_rate"),
    ("[tts]\nsample_rate = 24000.5", "tts.sample_rate"),
    ("[tts]\nvoice = \"joe\"", "tts.voice"),
    ("[llm]\nreply = \"  \"", "llm.reply"),
    ("seed = true", "seed"),
    ("stt = 3", "stt"),
    ("[stt\n", "(profile)"),
])
def test_bad_profile_values_name_the_field(tmp_path: Path, toml: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert err.value.field == field


def test_flags_and_overrides() -> None:
    args = build_parser().parse_args(
        ["--profile", "cloud-typical", "--llm-ttft", "0.3", "--tts-rtf", "0.5", "--seed", "3",
         "--llm-tokens-per-s", "inf"])
    profile = profile_from_args(args)
    assert (profile.llm.ttft_s, profile.tts.rtf, profile.seed) == (0.3, 0.5, 3)
    assert profile.llm.token_interval_s == 0 and profile.stt.final_s == 0.15
    assert Profile().with_overrides({"stt.final_s": 0.2}).stt.final_s == 0.2
    with pytest.raises(ConfigError, match="no_such"):
        load_profile("no_such")
    with pytest.raises(ConfigError) as err:
        start_cloudsim("fast", llm_drop_rate=2)  # checked before starting anything
    assert err.value.field == "llm.drop_rate"
    with pytest.raises(ConfigError, match="llm_speed"):
        start_cloudsim("fast", llm_speed=2)
    with pytest.raises(ConfigError, match="llm.ttft_s"):
        start_cloudsim("fast", llm_ttft="soon")


def test_a_child_that_cannot_start_is_reported() -> None:
    with pytest.raises(RuntimeError, match="exited with code 1.*cannot serve"):
        start_cloudsim("fast", host="192.0.2.1")  # TEST-NET-1: not ours, cannot bind
