"""The server's stages of a phone call's turns, for the bench and `rejoinder call`.

Media Streams have no events channel, so a phone caller gets no turn records as the call
goes. The server's call store has them (``GET /api/calls/{id}``, answered to loopback
clients without a token); the call is found by the ``CallSid`` the caller used (the store
keeps it as ``twilio_call_sid``) and its turns are turned into the records a WebRTC
caller receives, so :func:`rejoinder.bench.measure.turns_of` joins both alike.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import aiohttp

LIST_PAGE = 500         # calls listed per request (the API's largest page)
WAIT_S = 5.0            # for the store to hold the call's last turns
POLL_S = 0.2


def traces_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored call's turns as the records of the events channel: ``turn``, ``outcome``,
    ``speech_end_wall`` (seconds since the epoch), ``ms_after_speech_end``, ``tts_cached``."""
    out: list[dict[str, Any]] = []
    for t in record.get("turns") or []:
        at = t.get("speech_end_at")
        wall = None
        if isinstance(at, str):
            parsed = datetime.datetime.fromisoformat(at)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=datetime.UTC)
            wall = parsed.timestamp()
        out.append({"type": "trace", "turn": t.get("turn"), "outcome": t.get("outcome"),
                    "speech_end_wall": wall,
                    "ms_after_speech_end": dict(t.get("ms_after_speech_end") or {}),
                    "tts_cached": t.get("tts_cached"), "speculation": t.get("speculation")})
    return out


async def fetch_phone_traces(url: str, call_sid: str, since_wall: float, expected: int,
                             *, wait_s: float = WAIT_S) -> list[dict[str, Any]]:
    """The turn records of the phone call ``call_sid`` that started after ``since_wall``,
    once the store holds ``expected`` of them with a speech end (or after ``wait_s``, what
    it has). Empty when the server keeps no records or cannot be asked."""
    since = datetime.datetime.fromtimestamp(since_wall - 5.0, datetime.UTC).isoformat()
    timeout = aiohttp.ClientTimeout(total=5)
    traces: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            call_id = await _find(http, url, call_sid, since)
            while call_id is not None:
                async with http.get(f"{url}/api/calls/{call_id}") as r:
                    if r.status != 200:
                        return []
                    traces = traces_of(await r.json())
                done = sum(t["speech_end_wall"] is not None for t in traces)
                if done >= expected or loop.time() >= deadline:
                    break
                await asyncio.sleep(POLL_S)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return traces
    return traces


async def _find(http: aiohttp.ClientSession, url: str, call_sid: str,
                since: str) -> str | None:
    """The server's id of the phone call ``call_sid`` (newest first, from ``since``)."""
    params = {"transport": "twilio", "from": since, "limit": str(LIST_PAGE)}
    async with http.get(f"{url}/api/calls", params=params) as r:
        if r.status != 200:
            return None
        page = await r.json()
    for call in page.get("calls", []):
        async with http.get(f"{url}/api/calls/{call['call_id']}") as r:
            if r.status == 200 and (await r.json()).get("twilio_call_sid") == call_sid:
                return str(call["call_id"])
    return None
