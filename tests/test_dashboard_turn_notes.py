"""The dashboard's call page in a real browser shows a turn's barge-in stop time and its
guardrail flags, from records written into the store of a fake-stack server (loopback,
no token). Needs Debian's chromium at /usr/bin/chromium."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rejoinder.bench.runner import server_process
from rejoinder.store import CallEnd, CallStart, GuardrailFlag, Store, TurnRecord

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CALL = "feedfacefeedfacefeedfacefeedface"

# Installed by .ci/run; a missing one is a setup error and fails the tests, never a skip.
from playwright import sync_api  # noqa: E402


async def _write(db: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{db}")
    await store.migrate()
    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    await store.write([
        CallStart(CALL, "webrtc", "Rejoinder", start),
        TurnRecord(CALL, 0, 1, "interrupted", user_text="tell me a story",
                   agent_text="Once upon a time there was a fox.", interrupted=True,
                   heard_text="Once upon a", barge_in_stop_ms=80.0,
                   guardrails=[GuardrailFlag("flagged", "prompt_injection")]),
        TurnRecord(CALL, 1, 2, "completed", user_text="read my card back",
                   agent_text="I'm sorry, I can't help with that.",
                   guardrails=[GuardrailFlag("blocked", "card_number")]),
        CallEnd(CALL, start, "ended"),
    ])
    await store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("turn-notes")
    asyncio.run(_write(root / "calls.db"))
    env = {"REJOINDER_LOG__JSON": "false", "REJOINDER_STORE__PATH": str(root / "calls.db")}
    with server_process("fake", root / "server.log", env, startup_timeout_s=30) as (url, _):
        yield url


def test_the_call_page_shows_the_stop_time_and_the_guardrail_flags(server: str) -> None:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=["--no-sandbox", "--disable-gpu"])
        try:
            page = chromium.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{server}/dashboard#call/{CALL}")
            page.wait_for_function("() => window.dashboard.loaded > 0")
            first = page.locator('#call-turns li[data-turn="1"]')
            second = page.locator('#call-turns li[data-turn="2"]')
            assert first.locator(".stop").inner_text() == \
                "stopped 80 ms into the caller's speech"
            assert first.locator(".rail").all_inner_texts() == ["flagged: prompt_injection"]
            assert second.locator(".stop").count() == 0
            assert second.locator(".rail.blocked").all_inner_texts() == [
                "blocked: card_number"]
            assert page.locator("#error").inner_text() == ""
            assert errors == []
        finally:
            chromium.close()
