"""Dynamic batching: requests that arrive together share one model call."""

from __future__ import annotations

import asyncio
import contextlib

from parakeet_worker.runtime import metrics
from parakeet_worker.runtime.scheduling import BATCH_POOL, run_in

ARRIVING_WAIT_S = 0.05  # longest extra wait for requests still decoding (DynamicBatcher.request_arriving)


class DynamicBatcher:
    """Gathers requests that arrive within ``max_wait`` seconds (up to ``max_size``) into one call
    of ``run_batch(items, deliver)`` in a worker thread, so the event loop keeps serving while the
    model runs. ``run_batch`` may call ``deliver(index, result)`` as soon as one item is done (a
    batch can take several forward passes); whatever it returns settles the rest. A result that is
    an exception fails that item only."""

    def __init__(self, run_batch, max_size: int, max_wait: float):
        self.run_batch = run_batch
        self.max_size = max(1, max_size)
        self.max_wait = max(0.0, max_wait)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self.batches_run = 0
        self.largest_batch = 0
        self.arriving = 0  # requests still decoding their audio, to be submitted in a moment

    @contextlib.contextmanager
    def request_arriving(self):
        """Around a request's audio decoding: while any is in progress, a batch about to close
        waits for it (up to ARRIVING_WAIT_S more), so jobs that arrived together, but finished
        decoding a few milliseconds apart, still share one forward pass."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def submit(self, item):
        loop = asyncio.get_running_loop()
        if self._queue is None or self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._work())
        fut = loop.create_future()
        self._queue.put_nowait((item, fut))
        metrics.JOBS_QUEUED.set(self._queue.qsize())
        return await fut

    async def _gather(self, queue: asyncio.Queue) -> list:
        """The next batch: the first item, then whatever arrives before the deadline."""
        loop = asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = loop.time() + self.max_wait
        last_call = deadline + ARRIVING_WAIT_S
        while len(batch) < self.max_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            now = loop.time()
            if now >= deadline and (not self.arriving or now >= last_call):
                break
            wait = deadline - now if now < deadline else min(0.002, last_call - now)
            try:
                batch.append(await asyncio.wait_for(queue.get(), wait))
            except TimeoutError:
                continue
        return [(item, fut) for item, fut in batch if not fut.cancelled()]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            batch = await self._gather(queue)
            metrics.JOBS_QUEUED.set(queue.qsize())
            if not batch:
                continue
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            futures = [fut for _, fut in batch]

            def settle(fut, res):
                if fut.done():
                    return
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

            def deliver(k, res, futures=futures):  # called from the worker thread
                loop.call_soon_threadsafe(settle, futures[k], res)

            try:
                results = await run_in(BATCH_POOL, self.run_batch, [item for item, _ in batch], deliver)
            except Exception as exc:  # noqa: BLE001 - hand the failure to every waiter, keep serving
                for fut in futures:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for fut, res in zip(futures, results):
                settle(fut, res)


def plan_groups(lengths: list[int], max_padded: float, max_padding_ratio: float) -> list[list[int]]:
    """Split one batcher call into forward passes: indices sorted by length, a pass closed when
    adding the next clip would hold more than ``max_padded`` samples of padded audio, or pad its
    clips to more than ``max_padding_ratio`` times their real length (one long file is not padded
    against 15 short ones). A clip longer than the budget gets a pass of its own."""
    groups: list[list[int]] = []
    group: list[int] = []
    real = 0  # samples of real audio in the group
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        n = lengths[i]
        padded = n * (len(group) + 1)  # sorted: the newcomer is the longest
        if group and (padded > max_padded or padded > max_padding_ratio * (real + n)):
            groups.append(group)
            group, real = [], 0
        group.append(i)
        real += n
    if group:
        groups.append(group)
    return groups
