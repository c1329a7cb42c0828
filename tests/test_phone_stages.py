"""The bench finds a phone call's server stages in the call store by the caller's CallSid
and joins them like the turn records a WebRTC caller receives."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from rejoinder.bench.caller import CallRecord, SpokenTurn
from rejoinder.bench.measure import turns_of
from rejoinder.client.measure import Received
from rejoinder.client.phone_stages import fetch_phone_traces, traces_of

STORED = {
    "call_id": "c2", "transport": "twilio", "twilio_call_sid": "CA2",
    "turns": [{"seq": 1, "turn": 1, "outcome": "completed",
               "speech_end_at": "2026-12-06T20:00:01.250000+00:00", "tts_cached": False,
               "speculation": None,
               "ms_after_speech_end": {"vad_end": 100.0, "first_audio_sent": 620.0}}],
}
OTHER = {"call_id": "c1", "transport": "twilio", "twilio_call_sid": "CA1", "turns": []}


def test_stored_turns_become_trace_records_joined_to_the_caller_turns() -> None:
    traces = traces_of(STORED)
    wall = datetime(2026, 12, 6, 20, 0, 1, 250000, tzinfo=UTC).timestamp()
    assert traces == [{"type": "trace", "turn": 1, "outcome": "completed",
                       "speech_end_wall": wall, "tts_cached": False, "speculation": None,
                       "ms_after_speech_end": {"vad_end": 100.0, "first_audio_sent": 620.0}}]
    # The caller's EoS 30 ms before the server's speech end, on the caller's own clock.
    record = CallRecord("CA2", [SpokenTurn(1, 9.0, 10.0, False)],
                        Received(8000, [], []).loud_times(), traces, wall - 10.03)
    server = turns_of(record, 0, None)[0]["server"]
    assert server["stages"] == {"vad_end": 100.0, "first_audio_sent": 620.0}
    assert server["eos_lag_ms"] == 30.0


async def test_the_call_is_found_by_its_call_sid() -> None:
    asked: list[dict[str, str]] = []

    async def calls(request: web.Request) -> web.Response:
        asked.append(dict(request.query))
        return web.json_response({"calls": [{"call_id": "c2"}, {"call_id": "c1"}]})

    async def one(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"c1": OTHER, "c2": STORED}[request.match_info["call_id"]]
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/api/calls", calls)
    app.router.add_get("/api/calls/{call_id}", one)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        url = f"http://127.0.0.1:{port}"
        since = datetime(2026, 12, 6, 20, tzinfo=UTC).timestamp()
        found = await fetch_phone_traces(url, "CA2", since, 1, wait_s=0.0)
        missing = await fetch_phone_traces(url, "CA9", since, 1, wait_s=0.0)
    finally:
        await runner.cleanup()
    assert [t["turn"] for t in found] == [1]
    assert missing == []
    assert asked[0]["transport"] == "twilio"
    assert asked[0]["from"] == "2026-12-06T19:59:55+00:00"
