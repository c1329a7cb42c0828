"""The private parts of aiortc and aioice this project reads or replaces are still there.

pyproject.toml pins both below their next minor release; this test is what says which
attribute moved when a new release is tried, instead of a call that silently degrades
(or a decoder that never gets a packet).
"""

from __future__ import annotations

import asyncio
import inspect

import aioice.ice
import aiortc.jitterbuffer
import aiortc.rtcrtpreceiver
import aiortc.utils
from aiortc import RTCPeerConnection, RTCRtpReceiver

from rejoinder.transports import webrtc


def _moved(what: str, used_by: str) -> str:
    return f"aiortc/aioice changed: {what} is gone or moved (used by {used_by})"


async def test_the_receiver_internals_the_inline_decoder_uses() -> None:
    pc = RTCPeerConnection()
    try:
        receiver = pc.addTransceiver("audio").receiver
        assert hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"), _moved(
            "RTCRtpReceiver._RTCRtpReceiver__jitter_buffer", "set_jitter_buffer")
        assert hasattr(receiver, "_track"), _moved("RTCRtpReceiver._track", "InlineDecoder")
    finally:
        await pc.close()
    source = inspect.getsource(RTCRtpReceiver)
    assert "packet._data = " in source, _moved(
        "RtpPacket._data (the depayloaded bytes set by the receiver)", "InlineDecoder.add")
    assert "self.__jitter_buffer.add(packet)" in source, _moved(
        "RTCRtpReceiver calling jitter_buffer.add(packet)", "InlineDecoder.add")
    track = aiortc.rtcrtpreceiver.RemoteStreamTrack(kind="audio")
    assert isinstance(getattr(track, "_queue", None), asyncio.Queue), _moved(
        "RemoteStreamTrack._queue (an asyncio.Queue of frames)", "InlineDecoder.add")


def test_the_jitter_buffer_and_helpers() -> None:
    params = inspect.signature(aiortc.jitterbuffer.JitterBuffer).parameters
    assert {"capacity", "prefetch"} <= set(params), _moved(
        "JitterBuffer(capacity, prefetch)", "set_jitter_buffer")
    assert hasattr(aiortc.jitterbuffer, "JitterFrame"), _moved("JitterFrame", "InlineDecoder")
    assert callable(getattr(aiortc.utils, "uint16_gt", None)), _moved(
        "aiortc.utils.uint16_gt", "InlineDecoder.add")


def test_the_ice_host_address_hook() -> None:
    original = webrtc._original_get_host_addresses  # noqa: SLF001
    assert list(inspect.signature(original).parameters) == ["use_ipv4", "use_ipv6"], _moved(
        "aioice.ice.get_host_addresses(use_ipv4, use_ipv6)", "pinned_host_addresses")
    assert aioice.ice.get_host_addresses is webrtc._get_host_addresses, _moved(  # noqa: SLF001
        "aioice.ice.get_host_addresses (replaced at import)", "pinned_host_addresses")
    assert "get_host_addresses(" in inspect.getsource(aioice.ice.Connection), _moved(
        "Connection gathering through aioice.ice.get_host_addresses", "pinned_host_addresses")


async def test_what_the_slot_tests_use_to_cut_a_callers_network() -> None:
    pc = RTCPeerConnection()
    try:
        ice = pc.addTransceiver("audio").sender.transport.transport
        connection = getattr(ice.iceGatherer, "_connection", None)
        assert connection is not None, _moved("RTCIceGatherer._connection",
                                              "tests/test_call_slots.py")
        assert isinstance(getattr(connection, "_protocols", None), list), _moved(
            "aioice Connection._protocols", "tests/test_call_slots.py")
    finally:
        await pc.close()
