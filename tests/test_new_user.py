"""What a new user meets first: `rejoinder call`'s output and numbering, the page's legend,
`rejoinder bench` against a server already running on this machine."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rejoinder.client.caller as caller
from rejoinder.bench.runner import local_listener
from rejoinder.cli import main
from rejoinder.client.caller import CallResult, TurnResult, _announce_sent
from rejoinder.client.measure import Received, Utterance
from rejoinder.core.audio import SAMPLE_RATE, write_wav
from rejoinder.core.clock import Clock
from rejoinder.testing.virtual_time import run_virtual


def test_call_numbers_turns_as_the_server_does_in_the_summary_and_the_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # With a greeting (server turn 1), the caller's first utterance is server turn 2: the
    # live transcript says [2], and so must the summary and the JSON.
    async def fake_call(url: str, pcm: Any, **kw: Any) -> CallResult:
        kw["on_status"]("connected: call c1, 1 utterance(s) to send")
        kw["on_event"]({"type": "user", "turn": 2, "text": "hello"})
        turn = TurnResult(index=1, eos=1.0, v2v_ms=420.0, server={"turn": 2}, user_text="hello")
        return CallResult("c1", [turn], Received(48_000, [], []))

    monkeypatch.setattr(caller, "place_call", fake_call)
    wav, out = tmp_path / "in.wav", tmp_path / "out.json"
    write_wav(wav, np.zeros(SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE)
    main(["call", "--wav", str(wav), "--json", str(out)])
    printed = capsys.readouterr().out
    assert "  connected: call c1" in printed and "you   [2]: hello" in printed
    row = next(line for line in printed.splitlines() if "420" in line)
    assert row.split()[0] == "2"
    first = json.loads(out.read_text())["turns"][0]
    assert (first["turn"], first["utterance"]) == (2, 1)


def test_call_says_when_each_utterance_has_been_sent() -> None:
    said: list[str] = []
    sent_until = [0.0]  # the mic has sent the WAV up to here (seconds)

    def time_of(offset_s: float) -> float | None:
        return 100.0 + offset_s if offset_s <= sent_until[0] else None

    async def main_() -> None:
        clock = Clock()
        task = caller.asyncio.create_task(_announce_sent(
            [Utterance(0.5, 1.5), Utterance(3.0, 4.2)], time_of, said.append, clock))
        for t in (1.0, 2.0, 5.0):
            sent_until[0] = t
            await clock.sleep(0.2)
            if t == 1.0:
                assert said == []
            if t == 2.0:
                assert said == ["sent utterance 1/2 (0.5-1.5 s of the WAV)"]
        await task

    run_virtual(main_())
    assert said[-1] == "sent utterance 2/2 (3.0-4.2 s of the WAV)"


def test_the_page_explains_struck_through_words_and_the_dash() -> None:
    import rejoinder.web

    page = (Path(rejoinder.web.__path__[0]) / "index.html").read_text()
    legend = page.split('id="legend"', 1)[1].split("</p>", 1)[0]
    assert "<s>" in legend and "&ndash;" in legend and "did not hear" in legend


def test_bench_finds_the_process_of_a_server_on_a_loopback_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert local_listener(f"http://127.0.0.1:{port}") == os.getpid()
        assert local_listener(f"http://localhost:{port}/") == os.getpid()
        assert local_listener(f"http://example.com:{port}") is None
    assert local_listener(f"http://127.0.0.1:{port}") is None  # closed: nobody listens


def test_bench_port_and_url_are_one_or_the_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--port", "8080", "--url", "http://127.0.0.1:8080"]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.slow
async def test_a_real_call_reports_connected_and_each_utterance_sent(serve: Any) -> None:
    from rejoinder.testing import FakeLLM, FakeSTT, FakeTTS, Latency, fake_stack
    from rejoinder.testing.loopback import script_audio

    stack = fake_stack(stt=FakeSTT(["hello", "again"], Latency(first_s=0.1)),
                       llm=FakeLLM(["Hi.", "Sure."], Latency(first_s=0.1)),
                       tts=FakeTTS(Latency(first_s=0.05), sample_rate=24_000))
    audio = script_audio([("silence", 0.5), ("speech", 1.0), ("silence", 3.0),
                          ("speech", 0.8), ("silence", 2.5)])
    said: list[str] = []
    async with serve(stack) as url:
        result = await caller.place_call(url, audio, tail_s=5, on_status=said.append)
    assert said[0] == f"connected: call {result.call_id}, 2 utterance(s) to send"
    assert [s.split(" (")[0] for s in said[1:]] == ["sent utterance 1/2", "sent utterance 2/2"]
    assert [t.turn for t in result.turns] == [1, 2]
