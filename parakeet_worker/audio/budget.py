"""The decode memory budget: what all concurrent decodes of one worker may hold together."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from contextlib import asynccontextmanager


class DecodeBudget:
    """Bytes of decoded audio all concurrent decodes may hold together. A decode reserves its
    worst case before it starts and waits (first come, first served) while the budget is used up;
    one larger than the whole budget gets the whole budget and must fit in it."""

    def __init__(self, total_bytes: int):
        self.total = max(1, int(total_bytes))
        self.used = 0
        self._lock = threading.Lock()  # decodes may be awaited from more than one event loop
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @asynccontextmanager
    async def reserve(self, nbytes: int):
        """Yields the bytes granted (``min(nbytes, total)``) and gives them back on exit."""
        need = max(0, min(int(nbytes), self.total))
        fut = None
        with self._lock:
            if not self._waiters and self.used + need <= self.total:
                self.used += need
            else:
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append((need, fut))
        if fut is not None:
            try:
                await fut
            except asyncio.CancelledError:
                with self._lock:
                    if (need, fut) in self._waiters:  # not granted yet: just leave the queue
                        self._waiters.remove((need, fut))
                        self._wake()
                    # else: granted but not delivered; _deliver gives it back
                raise
        try:
            yield need
        finally:
            self._release(need)

    def _release(self, n: int) -> None:
        with self._lock:
            self.used -= n
            self._wake()

    def _wake(self) -> None:  # with the lock held
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            need, fut = self._waiters.popleft()
            self.used += need
            fut.get_loop().call_soon_threadsafe(self._deliver, need, fut)

    def _deliver(self, need: int, fut: asyncio.Future) -> None:
        if fut.done():  # its decode was cancelled meanwhile
            self._release(need)
        else:
            fut.set_result(None)
