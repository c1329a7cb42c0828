"""A debug aid for memory that grows: allocation snapshots on a signal.

With ``REJOINDER_DEBUG_TRACEMALLOC`` set to a folder, ``rejoinder serve`` traces Python
allocations (:mod:`tracemalloc`, ``FRAMES`` frames each) from its start, and on every
SIGUSR1 writes a snapshot there (``snapshot-<n>.tracemalloc``, numbered from 1). Tracing
costs memory and CPU (a soak of 6 calls answered in seconds instead of 0.6 s): a debug
mode, never for figures. It sees Python's allocations only, not those of native libraries
(onnxruntime, Opus, OpenSSL) or the C allocator's own keep. :func:`diff` compares two
snapshots by source line, the largest change (either way) first; a soak
(``rejoinder bench --soak-minutes --tracemalloc``) takes them and writes the diff.

Snapshots hold file names and line numbers of the code, never the objects' contents.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import tracemalloc
from pathlib import Path

ENV = "REJOINDER_DEBUG_TRACEMALLOC"
FRAMES = 10

log = logging.getLogger(__name__)


def install() -> Path | None:
    """Start tracing and dump a snapshot on each SIGUSR1, when ``ENV`` names a folder;
    call from the running event loop. Returns the folder, or None when not asked."""
    folder = os.environ.get(ENV)
    if not folder:
        return None
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(FRAMES)
    count = 0

    def dump() -> None:
        nonlocal count
        count += 1
        path = out / f"snapshot-{count}.tracemalloc"
        tracemalloc.take_snapshot().dump(str(path))
        log.warning("tracemalloc snapshot written to %s", path)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    log.warning("tracing allocations (%s): a debug mode, slower; SIGUSR1 writes a snapshot",
                ENV)
    return out


def diff(older: Path, newer: Path, limit: int = 25, key: str = "lineno") -> list[str]:
    """The ``limit`` source lines (or, with key "traceback", stacks) whose allocations
    changed most from ``older`` to ``newer`` (growth or shrinkage), one line each, then the
    totals."""
    a = tracemalloc.Snapshot.load(str(older))
    b = tracemalloc.Snapshot.load(str(newer))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    a, b = a.filter_traces(ignore), b.filter_traces(ignore)
    stats = b.compare_to(a, key)
    lines = []
    for s in stats[:limit]:
        where = " <- ".join(f"{f.filename}:{f.lineno}" for f in s.traceback[:4])
        lines.append(f"{s.size_diff / 1024:+10.1f} KiB {s.count_diff:+8d} blocks "
                     f"(now {s.size / 1024:.1f} KiB, {s.count} blocks)  {where}")
    total_a = sum(t.size for t in a.traces)
    total_b = sum(t.size for t in b.traces)
    lines.append(f"traced in all: {total_a / 2**20:.1f} -> {total_b / 2**20:.1f} MiB "
                 f"({(total_b - total_a) / 2**20:+.1f} MiB)")
    return lines


__all__ = ["ENV", "FRAMES", "diff", "install"]
