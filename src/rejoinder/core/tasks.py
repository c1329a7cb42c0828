"""Task helpers: cancel with a deadline, and stream results out of a worker thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_DONE = object()


async def cancel_and_wait(task: asyncio.Task[Any] | None, *, deadline: float = 2.0,
                          what: str = "task") -> None:
    """Cancel ``task`` and wait for it to finish, at most ``deadline`` seconds.

    Only a cancellation of the *caller* that arrives while we wait is raised (as in
    asyncio's own ``uncancel`` counting); the cancellation we caused in ``task`` is the
    expected outcome, and one the caller was already handling when it called us (cleanup
    in the ``finally`` of a cancelled task) does not stop the cleanup at its first child.
    A task that ignores cancellation past the deadline is logged by name.
    """
    if task is not None:
        await _cancel({task: what}, deadline)


async def cancel_all(tasks: Iterable[asyncio.Task[Any] | None], *,
                     deadline: float = 2.0) -> None:
    """Cancel every task in ``tasks`` at once, then wait for them all, at most ``deadline``
    seconds in all (see :func:`cancel_and_wait`). All are cancelled before the wait, so a
    cancellation of the caller that arrives meanwhile cannot leave any of them running."""
    await _cancel({t: t.get_name() for t in tasks if t is not None}, deadline)


async def _cancel(tasks: dict[asyncio.Task[Any], str], deadline: float) -> None:
    for task, what in tasks.items():
        if task.done():
            _report(task, what, "had failed")
        else:
            task.cancel()
    pending = [t for t in tasks if not t.done()]
    if not pending:
        return
    # ``asyncio.wait`` never raises the outcome of the tasks it waits for (unlike awaiting
    # them, or ``wait_for``), so a CancelledError out of it is always the caller's own,
    # requested while it waited: re-raised, never swallowed.
    done, hung = await asyncio.wait(pending, timeout=deadline)
    for task in done:
        _report(task, tasks[task], "failed while stopping")
    for task in hung:
        log.error("%s did not stop within %.1f s of cancellation", tasks[task], deadline)


def _report(task: asyncio.Task[Any], what: str, how: str) -> None:
    """Retrieve a finished task's exception (the task is gone either way)."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("%s %s: %r", what, how, task.exception())


async def stream_from_thread(
    make: Callable[[], Iterator[T]],
    executor: Executor | None = None,
    *,
    maxsize: int = 64,
) -> AsyncIterator[T]:
    """Run a blocking generator in a worker thread and yield its items on the loop.

    Closing the async iterator (or cancelling its consumer) sets a stop flag that
    the worker checks between items, so native generation stops at the next item
    instead of running to the end.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=0)
    stop = threading.Event()
    pending = threading.Semaphore(maxsize)

    def put(item: object) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            for item in make():
                if stop.is_set():
                    break
                while not pending.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                put(item)
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(_Failure(exc))
        finally:
            put(_DONE)

    future = loop.run_in_executor(executor, work)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.exc
            pending.release()
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        if not future.done():
            # Let the worker notice the flag; do not block the loop on it.
            future.add_done_callback(_consume_exception)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _consume_exception(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
