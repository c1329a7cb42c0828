from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import pytest

from rejoinder.config import Config, ServerOptions
from rejoinder.providers.base import Stack
from rejoinder.server.app import run_server


@contextlib.asynccontextmanager
async def serving(stack: Stack, **server_options: object) -> AsyncIterator[str]:
    """Run the real server in this process on a free loopback port; yield its URL."""
    config = dataclasses.replace(
        Config(), server=ServerOptions(host="127.0.0.1", port=0, **server_options))  # type: ignore[arg-type]
    ready, bound = asyncio.Event(), []
    task = asyncio.create_task(run_server(config, stack, ready=ready, bound=bound))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield f"http://127.0.0.1:{bound[0]}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def serve():
    return serving


@pytest.fixture(scope="session")
def local_stack():
    """The embedded models, loaded once for every test that needs them."""
    from rejoinder.providers.local import load_local_stack

    return load_local_stack()


@pytest.fixture(autouse=True)
def _data_home(tmp_path_factory, monkeypatch):
    """Call records of the servers a test starts (and their subprocesses) go to a temp dir of
    that test's own: a server resumes the post-call jobs it finds in its store, and with one
    store for the session a test's server ran earlier tests' jobs on its own scripted LLM."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))
