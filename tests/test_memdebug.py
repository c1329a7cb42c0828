"""The allocation snapshots of a server in debug mode (REJOINDER_DEBUG_TRACEMALLOC)."""

from __future__ import annotations

import asyncio
import os
import signal
import tracemalloc

from rejoinder.observability import memdebug


def test_no_tracing_unless_asked(monkeypatch):
    monkeypatch.delenv(memdebug.ENV, raising=False)
    assert memdebug.install() is None


async def test_sigusr1_writes_snapshots_and_the_diff_names_the_growing_line(
        tmp_path, monkeypatch):
    monkeypatch.setenv(memdebug.ENV, str(tmp_path / "snaps"))
    assert not tracemalloc.is_tracing()
    loop = asyncio.get_running_loop()
    try:
        assert memdebug.install() == tmp_path / "snaps"
        assert tracemalloc.is_tracing()

        async def snapshot(n: int) -> None:
            path = tmp_path / "snaps" / f"snapshot-{n}.tracemalloc"
            os.kill(os.getpid(), signal.SIGUSR1)
            for _ in range(1000):  # the handler runs on this loop: give it turns
                if path.exists():
                    break
                await asyncio.sleep(0.01)
            assert path.exists()

        await snapshot(1)
        kept = [bytearray(1000) for _ in range(2000)]  # about 2 MB held on this line
        await snapshot(2)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        tracemalloc.stop()
    lines = memdebug.diff(tmp_path / "snaps" / "snapshot-1.tracemalloc",
                          tmp_path / "snaps" / "snapshot-2.tracemalloc")
    assert "test_memdebug.py" in lines[0] and float(lines[0].split()[0]) > 1900  # KiB
    assert lines[-1].startswith("traced in all:")
    assert len(kept) == 2000
