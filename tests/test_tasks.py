"""cancel_and_wait / cancel_all: which cancellations are raised, and that cleanup completes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from rejoinder.core.tasks import cancel_all, cancel_and_wait
from rejoinder.testing import run_virtual


async def _child(stopping: asyncio.Event | None = None) -> None:
    """Runs until cancelled; with ``stopping``, its cleanup waits for that event."""
    try:
        await asyncio.Event().wait()
    finally:
        if stopping is not None:
            await stopping.wait()


def test_a_cancelled_tasks_cleanup_stops_every_child() -> None:
    async def main() -> list[asyncio.Task[None]]:
        children = [asyncio.create_task(_child(), name=f"child-{i}") for i in range(3)]
        cleaned = asyncio.Event()

        async def parent() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                for child in children:  # one by one, as Conversation.close does
                    await cancel_and_wait(child, what=child.get_name())
                cleaned.set()

        task = asyncio.create_task(parent())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleaned.is_set()  # the finally ran to its end...
        assert all(c.cancelled() for c in children)  # ...and every child ended
        return children

    run_virtual(main())


def test_a_cancellation_while_waiting_is_raised() -> None:
    async def main() -> asyncio.Task[None]:
        stopping = asyncio.Event()
        child = asyncio.create_task(_child(stopping))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(cancel_and_wait(child, deadline=60.0))
        await asyncio.sleep(1.0)  # the child is stuck in its cleanup; the waiter waits
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        stopping.set()
        await asyncio.sleep(0)
        assert child.cancelled()
        return waiter

    assert run_virtual(main()).cancelled()


def test_cancel_all_cancels_every_task_before_waiting() -> None:
    async def main() -> list[asyncio.Task[None]]:
        stopping = asyncio.Event()
        children = [asyncio.create_task(_child(stopping), name=f"c{i}") for i in range(3)]
        await asyncio.sleep(0)
        waiter = asyncio.create_task(cancel_all(children, deadline=60.0))
        await asyncio.sleep(1.0)
        waiter.cancel()  # the caller gives up while the first is still stopping
        with pytest.raises(asyncio.CancelledError):
            await waiter
        stopping.set()
        await asyncio.sleep(0)
        assert all(c.cancelled() for c in children)  # none was left running
        return children

    run_virtual(main())


def test_a_task_that_ignores_cancellation_is_logged_after_the_deadline(
        caplog: pytest.LogCaptureFixture) -> None:
    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(10.0)
            except asyncio.CancelledError:
                if asyncio.get_running_loop().time() > 100.0:
                    raise

    async def main() -> float:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        start = asyncio.get_running_loop().time()
        await cancel_and_wait(task, deadline=2.0, what="stubborn worker")
        waited = asyncio.get_running_loop().time() - start
        task.cancel()
        await asyncio.sleep(200.0)
        assert not task.done()
        await cancel_and_wait(task)
        assert task.cancelled()
        return waited

    with caplog.at_level(logging.ERROR, logger="rejoinder.core.tasks"):
        assert run_virtual(main()) == pytest.approx(2.0)
    assert "stubborn worker did not stop within 2.0 s" in caplog.text


def test_a_finished_task_is_left_alone() -> None:
    async def main() -> None:
        async def fails() -> None:
            raise ValueError("boom")

        task = asyncio.create_task(fails())
        await asyncio.sleep(0)
        await cancel_and_wait(task)  # no raise: the task is gone either way
        await cancel_and_wait(None)
        await cancel_all([task, None])

    run_virtual(main())
