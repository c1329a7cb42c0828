"""The call page shows tool calls as their events arrive (Chromium through Playwright, the
page served by a fake-stack server; the events are handed to the page's own handler, as
the data channel would)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rejoinder.bench.runner import server_process

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")

# Installed by .ci/run; a missing one is a setup error and fails the tests, never a skip.
from playwright import sync_api  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with server_process("fake", log, {"REJOINDER_LOG__JSON": "false"},
                        startup_timeout_s=30) as (url, _):
        yield url


@pytest.fixture
def page(server: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            yield page
            assert errors == []
        finally:
            browser.close()


def _send(page: Any, event: dict[str, Any]) -> None:
    page.evaluate("(data) => onServerMessage(data)", json.dumps(event))


def _lines(page: Any) -> list[str]:
    return list(page.evaluate("""() => [...document.querySelectorAll("#transcript li")]
        .map((li) => [...li.children].map((c) => c.textContent).join(" "))"""))


def test_tool_calls_show_as_they_happen(page: Any) -> None:
    tool = {"type": "tool", "turn": 1}
    _send(page, {**tool, "name": "find_slots", "status": "ok", "ms": 0.4, "prefetched": True})
    _send(page, {"type": "user", "turn": 1, "text": "Can I book a haircut on Monday?"})
    _send(page, {**tool, "name": "book", "status": "started", "prefetched": False})
    assert _lines(page) == ["you Can I book a haircut on Monday?",
                            "tool find_slots done in 0 ms, prefetched",
                            "tool book running…"]
    _send(page, {**tool, "name": "book", "status": "ok", "ms": 312.2, "prefetched": False})
    _send(page, {"type": "agent", "turn": 1, "text": "Booked, your reference is BK-26DEC06-001."})
    _send(page, {"type": "tool", "turn": 2, "name": "cancel", "status": "started"})
    _send(page, {"type": "tool", "turn": 2, "name": "cancel", "status": "timeout", "ms": 5000})
    assert _lines(page) == ["you Can I book a haircut on Monday?",
                            "tool find_slots done in 0 ms, prefetched",
                            "tool book done in 312 ms",
                            "agent Booked, your reference is BK-26DEC06-001.",
                            "tool cancel timed out in 5000 ms"]
    assert page.locator("#transcript li.tool.timeout").count() == 1
