"""Run the simulated cloud in a child process (``python -m rejoinder.cloudsim``).

A separate process keeps the simulator's own work off the event loop and the GIL of the
process being measured, as a real cloud would be.

    process, url = start_cloudsim("cloud-typical", llm_ttft=0.3)
    try:
        ...  # RemoteSTT(url), OpenAILLM(url + "/v1", "cloudsim"), RemoteTTS(url)
    finally:
        stop_cloudsim(process)

The keyword overrides are the ``dest`` of :func:`rejoinder.cloudsim.profile.override_flags`
(``llm_ttft``, ``llm_tokens_per_s``, ``stt_final``, ``tts_rtf``, ``llm_drop_rate``, ``seed``...).
Blocking (about half a second to start): from async code, call it via ``asyncio.to_thread``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from rejoinder.cloudsim.profile import load_profile, override_flags
from rejoinder.core.errors import ConfigError

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 15.0
_READY = re.compile(r"^cloudsim listening on (http://\S+)$")

Process = subprocess.Popen[str]


def start_cloudsim(profile: str | Path = "cloud-typical", *, host: str = "127.0.0.1",
                   port: int = 0, **overrides: float | int | str) -> tuple[Process, str]:
    """Start the simulator on ``port`` (0: a free one); return the process and its base URL
    once it listens (a given port: to start one again where its clients expect it).

    Override values may be typed (``llm_ttft=0.3``) or text as on the command line
    (``llm_ttft="0.3"``). A bad profile or override raises :class:`ConfigError` here, before
    anything starts; a child that does not come up within ``STARTUP_TIMEOUT_S`` (or exits)
    raises ``RuntimeError`` with the end of its stderr.
    """
    return _start(profile, host, overrides, port)


def _start(profile: str | Path, host: str, overrides: Mapping[str, float | int | str],
           port: int = 0) -> tuple[Process, str]:
    flags = override_flags()
    changes: dict[str, object] = {}
    argv = [sys.executable, "-m", "rejoinder.cloudsim", "--profile", str(profile),
            "--host", host, "--port", str(port)]
    for key, value in overrides.items():
        if key not in flags:
            raise ConfigError(key, f"unknown cloudsim override (known: {', '.join(flags)})")
        changes[flags[key].field] = flags[key].parse(value)
        argv.append(f"{flags[key].flag}={value}")  # "=": a value may start with "-"
    load_profile(profile).with_overrides(changes)  # validate in this process

    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, bufsize=1)
    assert process.stdout is not None and process.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    tail: collections.deque[str] = collections.deque(maxlen=20)

    def stderr_line(line: str) -> None:
        tail.append(line)
        log.debug("cloudsim: %s", line)

    threading.Thread(target=_pump, args=(process.stdout, lines.put, lambda: lines.put(None)),
                     name="cloudsim-stdout", daemon=True).start()
    errors = threading.Thread(target=_pump, args=(process.stderr, stderr_line),
                              name="cloudsim-stderr", daemon=True)
    errors.start()

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            stop_cloudsim(process)
            errors.join(1.0)
            raise RuntimeError(f"cloudsim not listening after {STARTUP_TIMEOUT_S} s: "
                               + " | ".join(tail)) from None
        if line is None:  # stdout closed: the child is exiting
            stop_cloudsim(process)
            errors.join(1.0)  # its last words
            raise RuntimeError(f"cloudsim exited with code {process.returncode}: "
                               + " | ".join(tail))
        match = _READY.match(line.strip())
        if match:
            log.info("cloudsim (pid %d) listening on %s", process.pid, match.group(1))
            return process, match.group(1)


def stop_cloudsim(process: Process, timeout_s: float = 5.0) -> None:
    """Terminate the simulator, killing it if it does not exit within ``timeout_s``.

    Idempotent."""
    stop_process(process, timeout_s, "cloudsim")


def stop_process(process: subprocess.Popen[Any], timeout_s: float, what: str) -> None:
    """Terminate a child process (a simulator, a server the bench started), killing it if
    it does not exit within ``timeout_s``. Idempotent."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) ignored SIGTERM for %s s: killing it",
                        what, process.pid, timeout_s)
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_cloudsim(profile: str | Path = "cloud-typical", *, host: str = "127.0.0.1",
                     **overrides: float | int | str) -> Iterator[str]:
    """``with running_cloudsim("fast") as url: ...``: start, yield the base URL, stop."""
    process, url = _start(profile, host, overrides)
    try:
        yield url
    finally:
        stop_cloudsim(process)


def _pump(stream: IO[str], sink: Callable[[str], None],
          on_eof: Callable[[], None] | None = None) -> None:
    """Read a child's pipe line by line until it closes (so the child never blocks on it)."""
    with stream:
        for line in stream:
            sink(line.rstrip("\n"))
    if on_eof is not None:
        on_eof()
