"""Every call slot comes back: real aiortc peer connections on loopback against the
real server (fake providers). A caller that never connects, or that vanishes without a
goodbye, is let go within the configured time; a short network outage is ridden out."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from rejoinder.client.connection import CallFailed, Connection, Mic
from rejoinder.testing import fake_stack
from rejoinder.transports.webrtc import pinned_host_addresses

pytestmark = pytest.mark.slow

JSON = {"Content-Type": "application/json"}


async def _calls(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url + "/api/health") as resp:
        return int((await resp.json())["calls"])


async def _wait_for_calls(url: str, want: int, limit_s: float) -> float:
    """Seconds until the server carries ``want`` calls; fails after ``limit_s``."""
    start = time.monotonic()
    while (calls := await _calls(url)) != want:
        if time.monotonic() - start > limit_s:
            pytest.fail(f"still {calls} calls after {limit_s} s (want {want})")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.parametrize("end_of_candidates", [True, False], ids=["complete", "no-end"])
async def test_a_caller_that_never_connects_frees_its_slot(serve: Any,
                                                           end_of_candidates: bool) -> None:
    pc = RTCPeerConnection()
    pc.createDataChannel("events")
    pc.addTransceiver("audio", direction="sendrecv")
    with pinned_host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    if not end_of_candidates:  # as Chrome sends it: candidates, no end marker
        sdp = re.sub(r"^a=end-of-candidates\r?\n", "", sdp, flags=re.M)
    try:
        async with serve(fake_stack(), max_calls=1, connect_timeout_s=1.0) as url:
            async with aiohttp.ClientSession() as http, http.post(
                    url + "/api/offer", data=json.dumps({"type": "offer", "sdp": sdp}),
                    headers=JSON) as resp:
                assert resp.status == 200  # answered, and the caller never uses the answer
            assert await _calls(url) == 1
            refused = Connection(Mic())
            try:
                with pytest.raises(CallFailed, match="503"):
                    await refused.open(url)
            finally:
                await refused.close()
            waited = await _wait_for_calls(url, 0, limit_s=3.0)
            assert waited > 0.5  # it was held until the timeout, not refused
    finally:
        await pc.close()


def _network(conn: Connection, up: bool) -> None:
    """Cut (or restore) the caller's network: nothing it sends leaves, nothing arrives.
    No BYE, no DTLS close: what the server sees of a killed process or a lost link."""
    pc = conn._pc  # noqa: SLF001
    assert pc is not None
    for transceiver in pc.getTransceivers():
        ice = transceiver.sender.transport.transport
        for protocol in ice.iceGatherer._connection._protocols:  # noqa: SLF001
            transport = protocol.transport
            if up:
                vars(transport).pop("sendto", None)
                vars(protocol).pop("datagram_received", None)
            else:
                transport.sendto = _drop
                protocol.datagram_received = _drop


def _drop(*args: object, **kwargs: object) -> None:
    return None


async def _connected_call(url: str) -> Connection:
    conn = Connection(Mic())
    await conn.open(url)
    pc = conn._pc  # noqa: SLF001
    assert pc is not None
    for _ in range(100):
        if pc.connectionState == "connected":
            break
        await asyncio.sleep(0.05)
    assert pc.connectionState == "connected"
    await asyncio.sleep(0.5)  # audio flowing
    return conn


async def test_a_caller_that_vanishes_is_let_go_within_the_media_timeout(serve: Any) -> None:
    async with serve(fake_stack(), media_timeout_s=1.0) as url:
        conn = await _connected_call(url)
        try:
            assert await _calls(url) == 1
            _network(conn, up=False)
            # aioice's consent freshness alone takes about 30 s to notice.
            waited = await _wait_for_calls(url, 0, limit_s=3.0)
            assert waited > 0.7
        finally:
            await conn.close()


async def test_a_short_network_outage_keeps_the_call(serve: Any) -> None:
    async with serve(fake_stack(), media_timeout_s=1.5) as url:
        conn = await _connected_call(url)
        try:
            _network(conn, up=False)
            await asyncio.sleep(0.6)
            _network(conn, up=True)
            await asyncio.sleep(2.5)  # well past the timeout, counted from the outage
            assert await _calls(url) == 1
            pc = conn._pc  # noqa: SLF001
            assert pc is not None and pc.connectionState == "connected"
        finally:
            await conn.close()
        await _wait_for_calls(url, 0, limit_s=5.0)
