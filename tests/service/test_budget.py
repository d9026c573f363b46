"""PixelBudget: a first-come-first-served weighted semaphore over image pixels."""

from __future__ import annotations

import asyncio
import time

import pytest

from dermagan.service.budget import Abandoned, PixelBudget


def test_requests_that_fit_go_at_once_and_the_rest_wait_in_arrival_order() -> None:
    seen: list[int] = []

    async def main() -> list[str]:
        budget = PixelBudget(100, seen.append)
        order: list[str] = []
        release = asyncio.Event()

        async def edit(name: str, pixels: int) -> None:
            async with budget.hold(pixels, timeout_s=5):
                order.append(name)
                await release.wait()

        first = asyncio.create_task(edit("a60", 60))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(edit("b50", 50)), asyncio.create_task(edit("c10", 10))]
        await asyncio.sleep(0.01)
        # c10 would fit (60 + 10) but b50 asked first: nothing overtakes the head of the line
        assert order == ["a60"] and budget.waiting == 2 and budget.used == 60
        release.set()
        await asyncio.gather(first, *waiting)
        assert budget.used == 0 and budget.waiting == 0
        return order

    assert asyncio.run(main()) == ["a60", "b50", "c10"]
    assert max(seen) <= 100 and seen[-1] == 0


def test_a_request_that_gives_up_lets_the_ones_behind_it_through() -> None:
    async def main() -> None:
        budget = PixelBudget(100)
        held = await budget.acquire(90, timeout_s=1)
        with pytest.raises(TimeoutError):
            await budget.acquire(50, timeout_s=0.05)  # the head of the line times out ...
        assert budget.waiting == 0
        assert await budget.acquire(10, timeout_s=0.05) == 10  # ... and no longer blocks a small one
        big = asyncio.create_task(budget.acquire(80, timeout_s=5))
        small = asyncio.create_task(budget.acquire(5, timeout_s=5))
        budget.release(10)  # 90 of 100 held: small would fit, but big is ahead of it
        await asyncio.sleep(0.01)
        assert not small.done() and budget.waiting == 2
        big.cancel()  # a client that went away while waiting
        assert await small == 5
        with pytest.raises(asyncio.CancelledError):
            await big
        budget.release(held)
        budget.release(5)
        assert budget.used == 0 and budget.waiting == 0

    asyncio.run(main())


def test_an_image_larger_than_the_budget_runs_alone_and_zero_means_unbounded() -> None:
    async def main() -> None:
        budget = PixelBudget(100)
        assert await budget.acquire(10**9, timeout_s=1) == 100
        with pytest.raises(TimeoutError):
            await budget.acquire(1, timeout_s=0.02)
        budget.release(100)
        assert await budget.acquire(1, timeout_s=0.02) == 1
        unbounded = PixelBudget(0)
        assert [await unbounded.acquire(10**9, timeout_s=0) for _ in range(3)] == [0, 0, 0]
        assert unbounded.used == 0

    asyncio.run(main())


def test_a_timeout_that_meets_a_release_in_one_turn_of_the_loop_stays_a_timeout() -> None:
    """The waiter's timeout cancels its future at once; a release() in the same turn of the loop, before the
    waiter resumes, drops that entry from the line (it is done). Once that made acquire raise ValueError
    ("not in deque"), which the service answered 500 instead of 504. Both timers are made due together by
    blocking the loop past them, so the interleaving is the same on every run."""
    async def main() -> None:
        budget = PixelBudget(100)
        held = await budget.acquire(100, timeout_s=1)
        waiter = asyncio.create_task(budget.acquire(50, timeout_s=0.01))
        await asyncio.sleep(0)  # the waiter is in line, its timeout armed
        assert budget.waiting == 1
        asyncio.get_running_loop().call_later(0.02, budget.release, held)
        time.sleep(0.1)  # both timers are due when the loop runs again: one turn runs both callbacks
        with pytest.raises(TimeoutError):
            await waiter
        assert budget.used == 0 and budget.waiting == 0
        assert await budget.acquire(100, timeout_s=0.01) == 100  # the budget is whole again

    asyncio.run(main())


def test_a_cancel_that_meets_a_release_in_one_turn_of_the_loop_stays_a_cancel() -> None:
    async def main() -> None:
        budget = PixelBudget(100)
        held = await budget.acquire(100, timeout_s=1)
        waiter = asyncio.create_task(budget.acquire(50, timeout_s=10))
        await asyncio.sleep(0)
        waiter.cancel()  # its client went away ...
        budget.release(held)  # ... and, before the waiter resumes, another request gives its pixels back
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert budget.used == 0 and budget.waiting == 0

    asyncio.run(main())


def test_a_waiter_whose_client_leaves_gives_up_its_place_in_line_at_once() -> None:
    async def main() -> None:
        budget = PixelBudget(100)
        held = await budget.acquire(90, timeout_s=1)
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        big = asyncio.create_task(budget.acquire(50, timeout_s=10, gone=gone))
        small = asyncio.create_task(budget.acquire(5, timeout_s=10))
        await asyncio.sleep(0.01)
        assert budget.waiting == 2 and not small.done()  # small fits, but waits behind big
        t0 = time.monotonic()
        gone.set_result(None)  # big's client disconnects
        with pytest.raises(Abandoned):
            await big
        assert time.monotonic() - t0 < 1, "the wait ends when the client leaves, not at the deadline"
        assert await small == 5  # and no longer holds the line
        assert budget.used == 95 and budget.waiting == 0
        budget.release(held)
        budget.release(5)
        # free at once: taken without a wait, even for a client already gone (the caller checks its client)
        both: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        both.set_result(None)
        assert await budget.acquire(100, timeout_s=1, gone=both) == 100
        budget.release(100)
        assert budget.used == 0 and budget.waiting == 0

    asyncio.run(main())
