"""The call watchdog on virtual time: exactly when a call that never connects, or whose
caller's audio stops, is closed (the real-WebRTC versions are in test_call_slots.py)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from rejoinder.config import Config, ServerOptions
from rejoinder.server.call import Call
from rejoinder.testing import fake_stack
from rejoinder.testing.virtual_time import run_virtual

CONFIG = dataclasses.replace(
    Config(), server=ServerOptions(connect_timeout_s=10.0, media_timeout_s=5.0))


async def _closed_at(script: list[tuple[float, str]]) -> float:
    """Run a call's watchdog while ``script`` plays (at time t: "connected" or "frame");
    return the virtual time at which the call closed itself."""
    loop = asyncio.get_running_loop()
    closed: list[float] = []
    call = Call(CONFIG, fake_stack(), lambda c: closed.append(loop.time()))
    call.watch()
    for at, what in script:
        await asyncio.sleep(at - loop.time())
        if call.closed.is_set():
            break
        if what == "connected":
            call._connected.set()  # noqa: SLF001  (what _on_state does on "connected")
        else:
            call._heard()  # noqa: SLF001  (what each caller frame does)
    await call.closed.wait()
    return closed[0]


def test_a_caller_that_never_connects_is_let_go_at_the_connect_timeout() -> None:
    assert run_virtual(_closed_at([])) == 10.0


def test_a_caller_that_connects_in_time_is_kept() -> None:
    frames = [(9.5 + 0.02 * i, "frame") for i in range(1, 500)]  # until t = 19.48
    assert run_virtual(_closed_at([(9.5, "connected"), *frames])) == pytest.approx(24.48)


def test_a_caller_whose_audio_stops_is_let_go_after_the_media_timeout() -> None:
    frames = [(1.0 + 0.5 * i, "frame") for i in range(1, 5)]  # until t = 3
    assert run_virtual(_closed_at([(1.0, "connected"), *frames])) == 8.0


def test_a_gap_shorter_than_the_media_timeout_keeps_the_call() -> None:
    script = [(1.0, "connected"), (2.0, "frame"), (6.9, "frame"), (11.8, "frame")]
    assert run_virtual(_closed_at(script)) == 16.8


def test_a_connected_caller_that_never_sends_audio_is_let_go() -> None:
    assert run_virtual(_closed_at([(2.0, "connected")])) == 7.0
