"""Task helpers: cancel with a deadline, and stream results out of a worker thread."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_DONE = object()


async def cancel_and_wait(task: asyncio.Task[object] | None, *, deadline: float = 2.0,
                          what: str = "task") -> None:
    """Cancel ``task`` and wait for it to finish, at most ``deadline`` seconds.

    A cancellation of the *caller* that arrives while we wait is re-raised; the
    cancellation we caused in ``task`` is not (it is the expected outcome).
    A task that ignores cancellation past the deadline is logged by name.
    """
    if task is None or task.done():
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.debug("%s had failed: %r", what, task.exception())
        return
    task.cancel()
    try:
        await asyncio.wait_for(asyncio.shield(task), deadline)
    except asyncio.CancelledError:
        if not task.done():
            raise  # we ourselves were cancelled while waiting
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except TimeoutError:
        log.error("%s did not stop within %.1f s of cancellation", what, deadline)
    except Exception as exc:  # the task failed while stopping; it is gone either way
        log.debug("%s failed while stopping: %r", what, exc)


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
