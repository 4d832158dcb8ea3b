"""Stopping the hub's tasks ends every one of them, even a polling loop whose
cancellation was dropped (Python 3.11's ``asyncio.wait_for`` drops one that
arrives as the call it waits on completes): a shutdown never hangs."""

from __future__ import annotations

import asyncio
import sys

from drivers.device import cancel_and_wait


async def _poller_that_drops_one_cancel(ended: list) -> None:
    """A loop like a driver's poll, whose first cancellation is lost."""
    dropped = False
    try:
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if dropped:
                    raise
                dropped = True
    finally:
        ended.append(True)


async def test_a_task_that_lost_its_cancellation_is_cancelled_again_and_ends():
    ended: list = []
    task = asyncio.get_running_loop().create_task(_poller_that_drops_one_cancel(ended))
    await asyncio.sleep(0.03)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done, "one cancel ended it: the poller did not lose its cancellation"
    await asyncio.wait_for(cancel_and_wait([task], nudge_s=0.1), 5)
    assert task.done() and ended == [True]


async def test_wait_for_drops_a_cancellation_that_meets_its_result_on_this_python_or_not():
    """The hazard itself: the result and the cancellation in the same turn
    of the loop. Whichever way this Python goes, cancel_and_wait ends it."""
    loop = asyncio.get_running_loop()
    inner = loop.create_future()
    rounds: list = []

    async def poll() -> None:
        nonlocal inner
        while True:
            await asyncio.wait_for(inner, 5)
            rounds.append(1)
            inner = loop.create_future()

    task = loop.create_task(poll())
    await asyncio.sleep(0)
    inner.set_result(None)
    task.cancel()
    await asyncio.sleep(0.1)
    if sys.version_info < (3, 12):
        assert not task.done() and rounds == [1], "wait_for kept the cancellation on this Python"
    await asyncio.wait_for(cancel_and_wait([task], nudge_s=0.1), 5)
    assert task.done()


async def test_a_task_that_failed_has_its_error_retrieved_and_finished_ones_are_left_alone():
    async def fails() -> None:
        raise OSError("the I/O module went away")

    loop = asyncio.get_running_loop()
    failed = loop.create_task(fails())
    finished = loop.create_task(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    await cancel_and_wait([failed, finished])
    assert isinstance(failed.exception(), OSError) and not finished.cancelled()
