"""The image budget: how many pixels of uploaded images this process works on at once.

Admission control bounds how many requests are in flight, not how large they are. A 128 px edit
holds ~0.1 MB of image while it waits for the model; a 12-megapixel photograph holds its decoded
pixels (3 bytes each), its mask and its result, ~5 bytes a pixel, from decoding to encoding. Sixty
such requests in flight would hold gigabytes, and a container's memory limit turns that into an
OOM kill of every request at once. So an edit (or segmentation) first takes its image's pixels --
read from the file's header, before anything is decoded -- from a budget, and gives them back when
answered; one that does not fit waits, first come first served, within its deadline (then 504).
Small images never wait in practice: the default budget holds thousands of them.

An image larger than the whole budget takes all of it (it runs alone) rather than never running.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any


class Abandoned(Exception):
    """The requester went away (its `gone` future completed) while it waited for pixels."""


class PixelBudget:
    """A FIFO weighted semaphore over pixels, for one event loop. `limit` 0 = unbounded."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._on_change = on_change

    async def acquire(self, pixels: int, timeout_s: float, gone: asyncio.Future[Any] | None = None) -> int:
        """Take `pixels` (at most the whole budget), waiting up to `timeout_s` behind every request that
        asked earlier (TimeoutError), or until `gone` (the client's disconnect) completes (Abandoned);
        returns what was taken, for `release`."""
        if self.limit <= 0:
            return 0
        n = max(0, min(pixels, self.limit))
        if not self._waiters and self.used + n <= self.limit:
            self._take(n)
            return n
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, granted)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout_s):
                if gone is None:
                    await granted
                else:  # (asyncio.wait wraps no future in a task)
                    await asyncio.wait((granted, gone), return_when=asyncio.FIRST_COMPLETED)
                    if not granted.done():
                        raise Abandoned("the requester went away while it waited")
        except BaseException:  # timed out, cancelled, or its client went away
            if granted.done() and not granted.cancelled():
                self.release(n)  # granted just as it gave up: hand it on
            else:
                # A timeout or cancel cancels `granted` at once; a release() before this task resumes may
                # have dropped the entry already (_wake skips a done one): a timeout stays a timeout.
                if entry in self._waiters:
                    self._waiters.remove(entry)
                self._wake()  # it may have held back smaller requests behind it
            raise
        return n

    def release(self, n: int) -> None:
        if n:
            self.used -= n
            self._changed()
            self._wake()

    @asynccontextmanager
    async def hold(self, pixels: int, timeout_s: float) -> AsyncIterator[None]:
        n = await self.acquire(pixels, timeout_s)
        try:
            yield
        finally:
            self.release(n)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _take(self, n: int) -> None:
        self.used += n
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.used)

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.limit:
            n, granted = self._waiters.popleft()
            if not granted.done():
                self._take(n)
                granted.set_result(None)
