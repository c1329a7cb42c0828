"""What a caller is told when a provider fails: a code and a stable message, never the
exception's text (internal URLs, vendor exception names), which goes to the log with the
call id. And the time limits of the provider base classes, on virtual time."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiohttp import web

from rejoinder.config import LLMOptions, STTOptions, TTSOptions, load_config
from rejoinder.core.audio import PCM
from rejoinder.core.clock import Clock
from rejoinder.core.errors import (
    ConfigError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    error_code,
)
from rejoinder.observability.logs import call_id_var
from rejoinder.providers.base import ChatMessage, Stack
from rejoinder.providers.factory import build_stack
from rejoinder.providers.openai.llm import OpenAILLM
from rejoinder.providers.phrase_cache import PhraseCache
from rejoinder.providers.remote import RemoteSTT, RemoteTTS
from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack, run_virtual
from rejoinder.testing.loopback import converse
from rejoinder.turn.reply import caller_error

HI = [ChatMessage("user", "Hi")]
ONE_TURN = [("silence", 0.5), ("speech", 1.0)]


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now


class _CallIdLog(logging.Handler):
    """Keeps (call id in the emitting context, message) of every record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((call_id_var.get(), record.getMessage()))


@pytest.fixture
def call_log():
    handler = _CallIdLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _remote_stack(kind: str, url: str) -> Stack:
    if kind == "stt":
        return fake_stack(stt=RemoteSTT(url))
    if kind == "llm":
        return fake_stack(stt=FakeSTT(["hi"]), llm=OpenAILLM(url + "/v1", "m"))
    return fake_stack(stt=FakeSTT(["hi"]), tts=RemoteTTS(url))


@pytest.mark.parametrize("kind", ["stt", "llm", "tts"])
def test_no_event_to_the_caller_names_the_provider_url_or_an_exception(kind, call_log):
    url = _closed_port_url()
    stack = _remote_stack(kind, url)

    async def main():
        try:
            return await converse(stack, ONE_TURN, extra_s=2.0)
        finally:
            await stack.close()

    conv, _, events = run_virtual(main())
    sent = json.dumps(events)
    for secret in (url, "127.0.0.1", "ClientConnectorError", "Error", "remote-", "openai",
                   "connection"):
        assert secret not in sent
    (error,) = [e for e in events if e["type"] == "error"]
    code = f"{kind}_unavailable"
    assert error["code"] == code and error["turn"] == 1
    assert isinstance(error["message"], str) and error["message"].endswith(".")
    (trace,) = [e for e in events if e["type"] == "trace"]
    assert trace["outcome"] == "failed" and trace["error"] == code
    assert conv.traces == [{k: v for k, v in trace.items() if k != "type"}]
    # The full detail is in the log, on a line that carries the call's id.
    assert any(cid == "t" and url in line and code in line for cid, line in call_log.lines)


def test_an_error_that_is_no_providers_is_internal_and_its_text_stays_in_the_log(caplog):
    class BrokenTTS(FakeTTS):
        def holds(self, text: str) -> bool:
            raise RuntimeError("bug near http://10.0.0.7:9000/v1/tts")

    stack = fake_stack(stt=FakeSTT(["hi"]), tts=BrokenTTS())
    with caplog.at_level(logging.ERROR):
        conv, _, events = run_virtual(converse(stack, ONE_TURN, extra_s=2.0))
    assert "10.0.0.7" not in json.dumps(events) and "RuntimeError" not in json.dumps(events)
    (error,) = [e for e in events if e["type"] == "error"]
    assert (error["code"], error["message"]) == ("internal", "The server could not answer "
                                                             "this turn.")
    assert conv.traces[0]["error"] == "internal"
    assert "10.0.0.7" in caplog.text  # with its traceback


def test_codes_and_messages_say_the_kind_and_the_class_only():
    timeout = ProviderTimeout("openai-llm", "no token within 10.0 s from http://h/v1")
    timeout.kind = "llm"
    assert caller_error(timeout) == (
        "llm_timeout", "The language model did not answer in time; this turn was not "
                       "answered.")
    down = ProviderUnavailable("remote-stt", "connection to http://h failed")
    down.kind = "stt"
    assert caller_error(down) == (
        "stt_unavailable", "Speech recognition is unavailable; this turn was not answered.")
    broken = ProviderError("remote-tts", "HTTP 500 from http://h: boom")
    broken.kind = "tts"
    assert caller_error(broken)[0] == "tts_failed"
    assert error_code(ProviderError("x", "y")) == "provider_failed"  # kind not known
    assert error_code(ValueError("x")) == "internal"


# --- the limits of the base classes, exact on virtual time ---------------------------------

def _failure_time(llm: FakeLLM, *, pause_s: float = 0.0) -> tuple[list[str], float, str]:
    """Consume ``llm.stream`` (sleeping ``pause_s`` after each item, as a slow consumer);
    the items, and when and how it failed ("" if it did not)."""
    clock = Clock()

    async def main() -> tuple[list[str], float, str]:
        got: list[str] = []
        try:
            async for delta in llm.stream(HI):
                got.append(delta)
                await clock.sleep(pause_s)
        except ProviderError as exc:
            return got, clock.now(), error_code(exc)
        return got, clock.now(), ""

    return run_virtual(main())


def test_the_first_item_and_every_gap_after_it_have_their_own_limit():
    # First token after 8 s (under the 10 s limit); then one every 4.9 s (under 5 s): fine.
    slow = FakeLLM(["a b c"], Latency(first_s=8.0, per_item_s=4.9))
    assert _failure_time(slow) == (["a", " b", " c"], pytest.approx(17.8), "")
    # A gap of 5 s fails the stream exactly 5 s after the item before it.
    stalled = FakeLLM(["a b c"], Latency(first_s=8.0, per_item_s=6.0))
    assert _failure_time(stalled) == (["a"], pytest.approx(13.0), "llm_timeout")
    stalled.stream_idle_timeout_s = 7.0
    assert _failure_time(stalled)[2] == ""
    # No first token: the first-item limit, not the idle one.
    silent = FakeLLM(["a"], Latency(fail="timeout"))
    assert _failure_time(silent) == ([], pytest.approx(10.0), "llm_timeout")


def test_the_consumers_own_time_between_items_does_not_count():
    quick = FakeLLM(["a b c"], Latency(first_s=0.1))
    assert _failure_time(quick, pause_s=30.0)[2] == ""


def test_a_tts_stream_that_stalls_after_its_first_chunk_times_out():
    tts = FakeTTS(Latency(first_s=0.2, fail="stall", fail_after=1))
    tts.stream_idle_timeout_s = 2.0
    clock = Clock()

    async def main() -> tuple[int, float, str]:
        chunks = 0
        try:
            async for _ in tts.synthesize("one two three"):
                chunks += 1
        except ProviderTimeout as exc:
            return chunks, clock.now(), error_code(exc)
        return chunks, clock.now(), ""

    assert run_virtual(main()) == (1, pytest.approx(2.2), "tts_timeout")


def test_prefill_warm_and_an_stt_session_have_limits_too():
    class Hanging(FakeLLM):
        async def _prefill(self, messages: list[ChatMessage]) -> None:
            await asyncio.sleep(math.inf)

    class Stalled(FakeSTT):
        async def _transcribe(self, audio: PCM) -> str:
            await asyncio.sleep(math.inf)
            return ""

    llm, stt = Hanging(), Stalled()
    llm.first_item_timeout_s, stt.stream_idle_timeout_s = 3.0, 2.0
    clock = Clock()

    async def main() -> list[tuple[str, float]]:
        out = []
        try:
            await llm.prefill(HI)
        except ProviderTimeout as exc:
            out.append((error_code(exc), clock.now()))
        session = stt.session()
        await session.push(np.zeros(320, np.int16), True)
        try:
            await session.finish()
        except ProviderTimeout as exc:
            out.append((error_code(exc), clock.now()))
        return out

    assert run_virtual(main()) == [("llm_timeout", pytest.approx(3.0)),
                                   ("stt_timeout", pytest.approx(5.0))]


def test_closing_a_stack_does_not_wait_for_ever_on_one_provider(caplog):
    class Stuck(FakeTTS):
        name = "stuck-tts"

        async def close(self) -> None:
            await asyncio.sleep(math.inf)

    clock = Clock()

    async def main() -> float:
        await fake_stack(tts=Stuck()).close(deadline_s=2.0)
        return clock.now()

    with caplog.at_level(logging.ERROR):
        assert run_virtual(main()) == pytest.approx(2.0)
    assert "stuck-tts did not close within 2.0 s" in caplog.text


# --- remote statuses -----------------------------------------------------------------------

@pytest.fixture
async def status_server():
    status = {"code": 503}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status["code"], text="busy at http://backend.internal")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v1/tts", handler)
    app.router.add_post("/v1/stt", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", status
    await runner.cleanup()


async def test_busy_statuses_are_unavailable_and_others_failed(status_server):
    url, status = status_server
    llm, stt, tts = OpenAILLM(url + "/v1", "m"), RemoteSTT(url), RemoteTTS(url)

    async def _drain(gen: AsyncIterator[object]) -> list[object]:
        return [x async for x in gen]

    try:
        for code, failure in ((503, "unavailable"), (429, "unavailable"), (500, "failed")):
            status["code"] = code
            got = []
            for make in (lambda: _drain(llm.stream(HI)),
                         lambda: stt.transcribe(np.zeros(160, np.int16)),
                         lambda: _drain(tts.synthesize("Hi."))):
                with pytest.raises(ProviderError, match="backend.internal") as caught:
                    await make()
                got.append(error_code(caught.value))
            assert got == [f"llm_{failure}", f"stt_{failure}", f"tts_{failure}"]
    finally:
        for p in (llm, stt, tts):
            await p.close()


# --- configuration -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
@pytest.mark.parametrize("options, section", [(LLMOptions, "llm"), (STTOptions, "stt"),
                                              (TTSOptions, "tts")])
def test_stream_idle_timeout_must_be_positive_and_finite(options, section, bad):
    with pytest.raises(ConfigError, match=f"{section}.stream_idle_timeout_s"):
        options(stream_idle_timeout_s=bad)


def test_each_kind_gets_its_sections_idle_limit():
    config = load_config(env={"REJOINDER_LLM__STREAM_IDLE_TIMEOUT_S": "2.5",
                              "REJOINDER_STT__STREAM_IDLE_TIMEOUT_S": "3",
                              "REJOINDER_TTS__STREAM_IDLE_TIMEOUT_S": "1.5"})
    stack = build_stack(config, "fake")
    assert stack.llm.stream_idle_timeout_s == 2.5
    assert stack.stt.stream_idle_timeout_s == 3.0
    assert isinstance(stack.tts, PhraseCache)
    assert stack.tts.stream_idle_timeout_s == stack.tts.inner.stream_idle_timeout_s == 1.5
    defaults = build_stack(load_config(env={}), "fake")
    assert (defaults.llm.stream_idle_timeout_s, defaults.stt.stream_idle_timeout_s,
            defaults.tts.stream_idle_timeout_s) == (5.0, 5.0, 5.0)


@pytest.fixture
async def stalling_server():
    """Answers 200, sends one token (or 100 ms of audio), then nothing, and never ends."""
    release = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"choices": [{"delta": {"content": "Well"}}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await release.wait()
        return resp

    async def tts(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Sample-Rate": "24000"})
        await resp.prepare(request)
        await resp.write(np.zeros(2400, "<i2").tobytes())
        await release.wait()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/tts", tts)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    release.set()
    await runner.cleanup()


async def test_remote_streams_that_stall_after_their_first_item_time_out(stalling_server):
    llm, tts = OpenAILLM(stalling_server + "/v1", "m"), RemoteTTS(stalling_server)
    llm.stream_idle_timeout_s = tts.stream_idle_timeout_s = 0.2
    deltas: list[str] = []
    chunks: list[PCM] = []
    try:
        with pytest.raises(ProviderTimeout, match="stalled") as llm_error:
            async for delta in llm.stream(HI):
                deltas.append(delta)
        with pytest.raises(ProviderTimeout, match="stalled") as tts_error:
            async for chunk in tts.synthesize("Hello."):
                chunks.append(chunk)
    finally:
        await llm.close()
        await tts.close()
    assert deltas == ["Well"] and sum(len(c) for c in chunks) == 2400
    assert (error_code(llm_error.value), error_code(tts_error.value)) == (
        "llm_timeout", "tts_timeout")
