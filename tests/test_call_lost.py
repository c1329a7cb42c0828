"""``rejoinder call`` notices a server that goes away mid-call, says so, and fails."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from rejoinder import cli
from rejoinder.client.caller import CallFailed, _unless_lost, watch_server
from rejoinder.core.audio import SAMPLE_RATE, write_wav
from rejoinder.testing import run_virtual
from rejoinder.testing.loopback import tone


def _probe_failing_from(t0: float) -> tuple[list[float], object]:
    asked: list[float] = []

    async def answers() -> bool:
        now = asyncio.get_running_loop().time()
        asked.append(now)
        return now < t0

    return asked, answers


def test_a_server_that_stops_answering_is_lost_after_two_misses() -> None:
    async def main() -> tuple[str, float, list[float]]:
        asked, answers = _probe_failing_from(3.5)
        start = asyncio.get_running_loop().time()
        reason = await watch_server(answers, asyncio.Event(), interval_s=1.0, misses=2)
        return reason, asyncio.get_running_loop().time() - start, asked

    reason, after, asked = run_virtual(main())
    assert after == pytest.approx(5.0)  # answered at 1, 2, 3; missed at 4 and 5
    assert asked == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    assert "stopped answering" in reason


def test_one_missed_check_is_not_a_lost_server() -> None:
    async def main() -> float:
        misses = iter([True, False, True, False, True, False, False])

        async def answers() -> bool:
            return next(misses)

        start = asyncio.get_running_loop().time()
        await watch_server(answers, asyncio.Event(), interval_s=1.0, misses=2)
        return asyncio.get_running_loop().time() - start

    assert run_virtual(main()) == pytest.approx(7.0)


def test_a_failed_peer_connection_is_lost_at_once() -> None:
    async def main() -> tuple[str, float]:
        lost = asyncio.Event()
        asyncio.get_running_loop().call_later(2.3, lost.set)

        async def answers() -> bool:
            return True

        reason = await watch_server(answers, lost, interval_s=1.0, misses=2)
        return reason, asyncio.get_running_loop().time()

    reason, at = run_virtual(main())
    assert at == pytest.approx(2.3, abs=1e-6)
    assert "closed the call or the connection failed" in reason


def test_a_lost_server_ends_the_call_with_an_error() -> None:
    async def main() -> tuple[bool, float]:
        finished = False

        async def call() -> None:
            nonlocal finished
            await asyncio.sleep(60.0)  # the rest of the WAV
            finished = True

        async def watch() -> str:
            await asyncio.sleep(2.0)
            return "the server stopped answering"

        with pytest.raises(CallFailed, match="connection to the server lost: the server"):
            await _unless_lost(call(), watch())
        return finished, asyncio.get_running_loop().time()

    finished, at = run_virtual(main())
    assert not finished and at == pytest.approx(2.0)


def test_a_call_that_ends_first_ends_normally() -> None:
    async def main() -> None:
        async def call() -> None:
            await asyncio.sleep(1.0)

        async def watch() -> str:
            await asyncio.sleep(60.0)
            return "never"

        await _unless_lost(call(), watch())

    run_virtual(main())


# -- end to end: a real server process, killed mid-call ------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(url: str, process: subprocess.Popen[bytes], limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited at start"
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the server did not come up")


@pytest.mark.slow
def test_rejoinder_call_reports_a_killed_server_and_fails(tmp_path, capsys) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "REJOINDER_STORE__PATH": str(tmp_path / "calls.db")}
    server = subprocess.Popen(
        [sys.executable, "-m", "rejoinder", "serve", "--stack", "fake", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_up(url, server)
        gap = np.zeros(3 * SAMPLE_RATE, dtype=np.int16)
        wav = tmp_path / "q.wav"  # 4 utterances, 16 s
        write_wav(wav, np.concatenate([tone(1.0), gap] * 4), SAMPLE_RATE)
        killed: list[float] = []

        def kill() -> None:
            killed.append(time.monotonic())
            server.send_signal(signal.SIGKILL)  # no goodbye of any kind

        timer = threading.Timer(4.0, kill)  # during the first reply or just after it
        timer.start()
        try:
            rc = cli.main(["call", "--wav", str(wav), "--url", url, "--tail", "5"])
        finally:
            timer.cancel()
        ended = time.monotonic()
    finally:
        server.kill()
        server.wait()
    assert killed, "the call ended before the server was killed"
    assert rc != 0
    err = capsys.readouterr().err
    assert "rejoinder: connection to the server lost" in err
    assert ended - killed[0] < 5.0  # not the rest of the 16 s WAV
