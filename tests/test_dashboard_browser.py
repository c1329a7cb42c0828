"""The dashboard in a real browser, after a real call: Chromium (through Playwright) calls a
fake-stack server with a token set from the call page (its fake microphone plays two
LibriVox sentences), hangs up, signs in to /dashboard with the token, and finds the call,
its transcript and each turn's waterfall (server stages and the voice-to-voice latency
the page measured), the latency charts and the weekly review. Takes screenshots of the
call page and the review; with REJOINDER_UPDATE_SCREENSHOTS=1 they replace
docs/dashboard.png and docs/dashboard-review.png (the README's).
Needs Debian's chromium at /usr/bin/chromium and the pocketsphinx test recordings.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
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
SENTENCES = [LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav",
             LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0890.wav"]
TOKEN = "dashboard-test-token-0123456789"
DOCS = Path(__file__).resolve().parent.parent / "docs"

# Installed by .ci/run; a missing one is a setup error and fails the tests, never a skip.
from playwright import sync_api  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("dashboard")
    env = {"REJOINDER_LOG__JSON": "false", "REJOINDER_SERVER__ADMIN_TOKEN": TOKEN,
           "REJOINDER_STORE__PATH": str(root / "calls.db")}
    with server_process("fake", root / "server.log", env, startup_timeout_s=30) as (url, _):
        yield url


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.int16)

    # Each reply (about 1 s after the end of speech, 2.25 s long) ends before the next
    # sentence, so both turns complete.
    parts = [silence(1.5)]
    for path in SENTENCES:
        parts += [read_wav(path, SAMPLE_RATE), silence(4.5)]
    path = tmp_path_factory.mktemp("audio") / "caller.wav"
    write_wav(path, np.concatenate(parts), SAMPLE_RATE)
    return path.resolve()


@pytest.fixture(scope="module")
def browser(speech_wav: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                  f"--use-file-for-fake-audio-capture={speech_wav}%noloop",
                  "--autoplay-policy=no-user-gesture-required",
                  "--allow-loopback-in-peer-connection", "--no-sandbox", "--disable-gpu",
                  "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        try:
            yield chromium
        finally:
            chromium.close()


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_the_dashboard_shows_a_finished_call(server: str, browser: Any, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        # The call, from the call page (which stays open with a token set).
        page.goto(server + "/?raw=1")
        page.click("#call")
        try:
            page.wait_for_function(
                """() => window.rejoinder.turns.filter(t => t.latencyMs !== null
                          && t.trace !== null && t.outcome === "completed").length >= 2""",
                timeout=40_000)
        except sync_api.TimeoutError:
            pytest.fail("the call did not complete two measured turns\n" + "\n".join(console))
        state = page.evaluate("window.rejoinder")
        call_id = state["callId"]
        page.click("#call")  # hang up
        assert page.evaluate("window.rejoinder.state") == "ended"

        # The records API needs the token.
        assert _get(f"{server}/api/calls/{call_id}")[0] == 401
        status, record = _get(f"{server}/api/calls/{call_id}", TOKEN)
        assert status == 200 and len(record["turns"]) >= 2

        # The dashboard: a login form, then the calls list.
        page.goto(server + "/dashboard")
        page.fill("#token", "not-the-token-0123456789")
        page.click("button[type=submit]")
        assert "not the token" in page.locator("#message").inner_text()
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_function("() => window.dashboard && window.dashboard.loaded > 0")
        row = page.locator(f'#calls tr[data-call="{call_id}"]')
        assert row.count() == 1, "\n".join(console)

        # The call page: the transcript turn by turn, each turn's waterfall.
        loaded = page.evaluate("window.dashboard.loaded")
        row.click()
        page.wait_for_function(f"() => window.dashboard.loaded > {loaded}")
        assert page.evaluate("window.dashboard.view") == "call"
        assert page.locator("#error").inner_text() == ""
        for measured in state["turns"][:2]:
            turn = page.locator(f'#call-turns li[data-turn="{measured["turn"]}"]')
            assert "(fake transcript)" in turn.locator(".you").inner_text()
            assert "This is a fake reply" in turn.locator(".agent").inner_text()
            for stage in ("vad_end", "stt_final", "llm_first_token", "first_audio_sent",
                          "v2v"):
                assert turn.locator(f'.track[data-stage="{stage}"] .bar').count() == 1, stage
            shown = turn.locator(".value.v2v").inner_text()
            assert shown == f"{round(measured['latencyMs'])} ms"
        assert page.locator("#call-tools tbody tr").count() == 0  # no tools yet
        assert page.locator("#call-analytics").is_visible() == ("analytics" in record)
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # Latency over time: a table and two uPlot charts.
        loaded = page.evaluate("window.dashboard.loaded")
        page.click('nav a[data-view="latency"]')
        page.wait_for_function(f"() => window.dashboard.loaded > {loaded}")
        v2v_row = page.locator('#latency-table tr[data-stage="v2v"]')
        assert v2v_row.locator("td").nth(3).inner_text() == str(len(record["turns"]))
        assert page.locator("#chart-p95 canvas").count() == 1
        assert page.locator("#chart-p50 .u-legend").count() == 1

        # The review: every target with its verdict.
        loaded = page.evaluate("window.dashboard.loaded")
        page.click('nav a[data-view="review"]')
        page.wait_for_function(f"() => window.dashboard.loaded > {loaded}")
        statuses = dict(page.evaluate(
            """() => [...document.querySelectorAll('#review tbody tr')]
                      .map(r => [r.dataset.check, r.dataset.status])"""))
        assert statuses["v2v_p95"] in ("pass", "fail")
        assert statuses["barge_in_stop"] == "no_data"  # the caller never spoke over it
        assert statuses["tool_timeouts"] == "pass"
        page.screenshot(path=str(tmp_path / "dashboard-review.png"), full_page=True)
        # The login page itself comes with a 401, which Chromium logs; nothing else failed.
        errors = [c for c in console if c.startswith(("pageerror", "error"))]
        assert all("status of 401" in c for c in errors), errors
        assert len(errors) == 2, errors  # the first visit and the wrong token
    finally:
        context.close()
    if os.environ.get("REJOINDER_UPDATE_SCREENSHOTS") == "1":
        for name in ("dashboard.png", "dashboard-review.png"):
            shutil.copyfile(tmp_path / name, DOCS / name)
