"""The call page in a real browser: Chromium (through Playwright) calls a fake-stack server.

Chromium's fake microphone plays a WAV: silence, a LibriVox sentence, a pause, a second
sentence that starts while the agent is answering the first (a barge-in), then silence.
So the page measures real voice-to-voice latency from real WebRTC audio, twice. Needs
Debian's chromium at /usr/bin/chromium and the pocketsphinx test recordings.

Timeline with the fake stack (the agent starts ~1.0 s after the end of speech and talks
for 2.25 s): the second sentence starts 1.8 s after the first ends, so it interrupts the
reply with ~0.8 s to spare on either side.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rejoinder.bench.runner import server_process
from rejoinder.core.audio import SAMPLE_RATE, read_wav, write_wav

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
FIRST = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"   # 3.0 s
SECOND = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0930.wav"  # 3.3 s
LEAD_S = 1.5   # silence before speech: the call connects meanwhile
GAP_S = 1.8    # between the sentences: the agent starts answering the first
TAIL_S = 8.0   # after speech: the second reply plays (and the fake mic keeps running)
FAKE_REPLY = "This is a fake reply from the test stack."

# Installed by .ci/run; a missing one is a setup error and fails the tests, never a skip.
from playwright import sync_api  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        with server_process("fake", log, {"REJOINDER_LOG__JSON": "false"},
                            startup_timeout_s=30) as (url, _):
            yield url
    finally:
        if os.environ.get("REJOINDER_TEST_VERBOSE"):
            print(log.read_text())


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.int16)

    audio = np.concatenate((silence(LEAD_S), read_wav(FIRST, SAMPLE_RATE), silence(GAP_S),
                            read_wav(SECOND, SAMPLE_RATE), silence(TAIL_S)))
    path = tmp_path_factory.mktemp("audio") / "caller.wav"
    write_wav(path, audio, SAMPLE_RATE)
    return path.resolve()


@pytest.fixture(scope="module")
def browser(speech_wav: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={speech_wav}%noloop",
                "--autoplay-policy=no-user-gesture-required",
                "--allow-loopback-in-peer-connection",
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()


# Keeps every microphone stream the page opens, to check that hanging up stops it.
_KEEP_MIC_STREAMS = """
window.__micStreams = [];
const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (constraints) => {
  const stream = await getUserMedia(constraints);
  window.__micStreams.push(stream);
  return stream;
};
"""


@pytest.fixture
def console() -> list[str]:
    return []


@pytest.fixture
def page(browser: Any, console: list[str]) -> Iterator[Any]:
    context = browser.new_context()
    context.add_init_script(_KEEP_MIC_STREAMS)
    page = context.new_page()
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        yield page
    finally:
        context.close()


def _diagnostics(page: Any, console: list[str]) -> str:
    state = page.evaluate("JSON.stringify(window.rejoinder, null, 1)")
    return "console:\n" + "\n".join(console) + f"\nwindow.rejoinder: {state}"


def _shown_ms(cell: Any) -> float:
    return float(cell.inner_text().removesuffix(" ms"))


def _mic_tracks(page: Any) -> list[str]:
    return list(page.evaluate(
        "window.__micStreams.flatMap(s => s.getTracks().map(t => t.readyState))"))


def test_call_measures_voice_to_voice_latency(server: str, page: Any,
                                              console: list[str]) -> None:
    page.goto(server + "/?raw=1")
    assert page.locator("#call").inner_text() == "Call"
    page.click("#call")
    try:
        page.wait_for_function("() => window.rejoinder.state === 'connected'", timeout=10_000)
        # Two turns, each with the caller's transcript, the agent's words, the page's
        # latency and the server's trace (sent when the reply has finished or was cut).
        page.wait_for_function(
            """() => window.rejoinder.turns.filter(t => t.user !== null && t.agent.length
                      && t.latencyMs !== null && t.trace !== null).length >= 2""",
            timeout=30_000)
    except sync_api.TimeoutError:
        pytest.fail("the call did not complete two measured turns\n" + _diagnostics(page, console))

    state = page.evaluate("window.rejoinder")
    first, second = state["turns"][:2]
    diag = f"turns: {state['turns']}\nlatencies: {state['latencies']}"
    assert [first["turn"], second["turn"]] == [1, 2], diag
    assert [x["turn"] for x in state["latencies"]] == [1, 2], diag
    # Two different measurements: each reply's onset follows its own end of speech.
    assert first["eos"] < first["onset"] < second["eos"] < second["onset"], diag
    for turn in (first, second):
        assert turn["user"] == "(fake transcript)", diag
        assert 0 < turn["latencyMs"] < 5000, diag
        stages = turn["trace"]
        for stage in ("vad_end", "stt_final", "llm_first_token", "tts_first_audio",
                      "first_audio_sent"):
            assert isinstance(stages.get(stage), (int, float)), diag
        # The page's end of speech comes a little before the server's (uplink: Opus
        # frame, network, jitter buffer), and it hears the agent a little after the
        # server sent it (downlink: network, jitter buffer, decode), so its latency is
        # the server's plus a bit (here ~+100 ms); a page that got its end of speech
        # wrong would fall outside.
        sent = stages["first_audio_sent"]
        assert sent - 50 < turn["latencyMs"] < sent + 500, diag
        print(f"\nturn {turn['turn']} ({turn['outcome']}): page v2v {turn['latencyMs']:.1f} ms"
              f" (EoS {turn['eos']:.4f} s, onset {turn['onset']:.4f} s, page audio clock);"
              f" server first_audio_sent {sent:.1f} ms; browser jitter buffer"
              f" {turn['jitterBufferMs']} ms; server stages {stages}")

    # The second sentence interrupted the first reply; the second reply ran to its end.
    assert first["outcome"] == "interrupted" and first["interrupted"], diag
    heard = first["heard"].split()
    assert 0 < len(heard) < len(FAKE_REPLY.split()), diag
    assert heard == FAKE_REPLY.split()[:len(heard)], diag
    assert second["outcome"] == "completed", diag
    assert " ".join(second["agent"]) == FAKE_REPLY, diag

    # What the person sees.
    for n in (1, 2):
        you = page.locator(f'#transcript li.you[data-turn="{n}"]')
        assert "(fake transcript)" in you.inner_text()
    cut = page.locator('#transcript li.agent.interrupted[data-turn="1"]')
    assert cut.locator(".heard").inner_text() == first["heard"]
    assert cut.locator(".unheard").inner_text() == " ".join(FAKE_REPLY.split()[len(heard):])
    assert "interrupted" in cut.locator(".note").inner_text()
    assert FAKE_REPLY in page.locator('#transcript li.agent[data-turn="2"]').inner_text()
    for turn in (first, second):
        row = page.locator(f'#turns tbody tr[data-turn="{turn["turn"]}"]')
        assert _shown_ms(row.locator("td.v2v")) == pytest.approx(turn["latencyMs"], abs=0.5)
        assert _shown_ms(row.locator("td.first_audio_sent")) == \
            pytest.approx(turn["trace"]["first_audio_sent"], abs=0.5)
        assert row.locator("td.outcome").inner_text() == turn["outcome"]

    # Hang up: the page closes the call and stops the microphone; the server lets it go.
    assert page.locator("#call").inner_text() == "Hang up"
    assert _mic_tracks(page) == ["live"]
    page.click("#call")
    assert page.evaluate("window.rejoinder.state") == "ended"
    assert page.locator("#call").inner_text() == "Call"
    assert _mic_tracks(page) == ["ended"]
    deadline = time.monotonic() + 10
    while _get_json(server + "/api/health")["calls"] and time.monotonic() < deadline:
        time.sleep(0.1)

    # The page posted each measurement back: kept with its turn's record, and observed.
    record = _get_json(f"{server}/api/calls/{state['callId']}")
    stored = {t["turn"]: t["caller_v2v_ms"] for t in record["turns"]}
    for turn in (first, second):
        assert stored[turn["turn"]] == pytest.approx(turn["latencyMs"], abs=0.05), record
    with urllib.request.urlopen(server + "/metrics", timeout=2) as resp:
        families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
    counts = [s.value for s in families["rejoinder_caller_v2v_ms"].samples
              if s.name == "rejoinder_caller_v2v_ms_count"]
    assert counts and counts[0] >= 2
    assert _get_json(server + "/api/health")["calls"] == 0


def test_page_shows_the_servers_refusal(server: str, page: Any, console: list[str]) -> None:
    def refuse(route: Any) -> None:
        route.fulfill(status=503, content_type="application/json",
                      body=json.dumps({"error": "server is at capacity"}))

    page.route("**/api/offer", refuse)
    page.goto(server + "/?raw=1")
    page.click("#call")
    status = page.locator("#status")
    try:
        page.wait_for_function("() => window.rejoinder.state === 'failed'", timeout=10_000)
    except sync_api.TimeoutError:
        pytest.fail("the page did not report the refusal\n" + _diagnostics(page, console))
    assert "server is at capacity" in status.inner_text()
    assert "error" in (status.get_attribute("class") or "")
    assert page.locator("#call").inner_text() == "Call"
    assert _mic_tracks(page) == ["ended"]  # the refused call let the microphone go
