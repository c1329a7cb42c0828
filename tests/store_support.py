"""A throwaway PostgreSQL cluster for the store tests (Debian's ``postgresql`` package)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _demote() -> tuple[Callable[[], None] | None, int | None, int | None]:
    """initdb and postgres refuse to run as root: run them as an unprivileged user."""
    if os.geteuid() != 0:
        return None, None, None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam(name)
            return _switch_to(user.pw_uid, user.pw_gid), user.pw_uid, user.pw_gid
    return None, None, None


def _switch_to(uid: int, gid: int) -> Callable[[], None]:
    def demote() -> None:
        os.setgid(gid)
        os.setuid(uid)
    return demote


@dataclass
class PgCluster:
    root: Path
    port: int
    pg_ctl: str
    demote: Callable[[], None] | None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run([self.pg_ctl, "-D", str(self.root / "data"), *args], check=True,
                       preexec_fn=self.demote, capture_output=True, timeout=60)

    def start(self) -> None:
        self._ctl("-w", "-l", str(self.root / "log"), "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-w", "-m", mode, "stop")


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster | str]:
    """A running cluster, or the reason one cannot start (a string)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        yield "PostgreSQL is not installed (initdb/pg_ctl not found; apt-get install postgresql)"
        return
    demote, uid, gid = _demote()
    root = Path(tempfile.mkdtemp(prefix="rejoinder-pg-"))
    if uid is not None and gid is not None:
        os.chown(root, uid, gid)
    cluster = PgCluster(root, _free_port(), pg_ctl, demote)
    try:
        try:
            subprocess.run([initdb, "-D", str(root / "data"), "-U", "postgres",
                            "--auth=trust", "--no-sync", "-E", "UTF8"], check=True,
                           preexec_fn=demote, capture_output=True, timeout=120)
            cluster.start()
        except (subprocess.SubprocessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            yield f"PostgreSQL did not start: {exc} {detail.decode(errors='replace')[-300:]}"
            return
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
