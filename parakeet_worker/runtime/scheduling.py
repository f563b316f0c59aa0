"""Fair use of the one model: live streams first, batch work in passes short enough to interleave.

Why: batch jobs and live streams share one engine. A forward pass cannot be interrupted, so a
stream waits for whatever pass holds the model. Two rules keep that wait at about one streaming
step (bench/stall_bench.py measures it):

1. ``PriorityGate``: the engine's lock, where a waiting streaming step always goes before a
   waiting batch pass, and a batch pass also defers (up to ``BATCH_MAX_DEFER_S``) while any live
   stream has a full step of audio waiting: batch work fills the gaps between steps, so streams
   keep up with real time whenever the device can decode them alone.
2. ``PassBudget``: while any stream is live, a batch pass holds at most about one streaming step's
   worth of compute (``LIVE_BATCH_PASS_S``): batches are split and long audio runs in short
   windows. The seconds of audio that fit are learnt from the passes already run. With no live
   stream, passes are full size again (throughput).

Slow work also runs on executors sized for it, never on the event loop, and never starving the
streaming scheduler of a thread:
- ``BATCH_POOL``: batch forward passes (the dynamic batcher's, and local-attention windows);
- ``STREAM_POOL``: the streaming steps (one thread, always free for them);
- ``BLOCKING_POOL``: everything else that would block the loop: loading the model, building a
  streaming pipeline, base64 decoding, merging long audio's windows, rendering long outputs.
Audio decoding is not on these pools: ffmpeg runs in its own process (awaited), and the soundfile
path reads in blocks on ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from parakeet_worker.runtime import metrics

STREAM, BATCH = 0, 1  # priorities: lower goes first
BATCH_MAX_DEFER_S = 2.0  # a batch pass waits at most this long for streams that have audio ready


class PriorityGate:
    """A lock with two priorities: when it is released, a waiting STREAM caller takes it before
    any BATCH caller. Same callers, same order otherwise (a Condition's FIFO-ish wake-up)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._waiting = [0, 0]
        # set by the streaming decoder: True while a live stream has a full step of audio waiting
        self.stream_demand = lambda: False

    def _batch_must_wait(self, since: float) -> bool:
        if self._waiting[STREAM]:
            return True
        return time.perf_counter() - since < BATCH_MAX_DEFER_S and self.stream_demand()

    @contextlib.contextmanager
    def hold(self, priority: int = BATCH):
        t0 = time.perf_counter()
        with self._cond:
            self._waiting[priority] += 1
            try:
                while self._held or (priority == BATCH and self._batch_must_wait(t0)):
                    # a batch waiter re-checks the streams' demand, which changes without a notify
                    self._cond.wait(None if priority == STREAM else 0.02)
            finally:
                self._waiting[priority] -= 1
            self._held = True
        metrics.ENGINE_WAIT.labels("stream" if priority == STREAM else "batch").observe(time.perf_counter() - t0)
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()

    def locked(self) -> bool:
        return self._held

    @property
    def streams_waiting(self) -> int:
        return self._waiting[STREAM]


class PassBudget:
    """How much padded audio one batch forward pass may hold while streams are live.

    ``live_streams`` is kept by the streaming decoder. ``record(audio_s, seconds)`` after each
    batch pass keeps a running estimate of compute seconds per padded audio second;
    ``audio_s()`` answers ``full_s`` without live streams, else the audio that fits in
    ``target_s`` of compute, never less than ``min_s`` (a window shorter than that would be all
    seams)."""

    def __init__(self, full_s: float, target_s: float, min_s: float):
        self.full_s, self.target_s, self.min_s = full_s, target_s, min_s
        self.live_streams = 0
        self._rate: float | None = None  # compute seconds per padded audio second

    def record(self, audio_s: float, seconds: float) -> None:
        if audio_s < 1.0:
            return
        rate = seconds / audio_s
        self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate

    @property
    def live(self) -> bool:
        return self.live_streams > 0

    def audio_s(self) -> float:
        if not self.live:
            return self.full_s
        if self._rate is None:
            return self.min_s
        return float(min(self.full_s, max(self.min_s, self.target_s / self._rate)))


def _pool(workers: int, name: str) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name)


BLOCKING_POOL = _pool(4, "blocking")
BATCH_POOL = _pool(2, "batch")
STREAM_POOL = _pool(1, "stream")


INLINE = False  # bench/profile_bench.py: run everything in the calling thread, where the profiler is


async def run_in(pool: ThreadPoolExecutor, fn, *args, **kwargs):
    """``asyncio.to_thread`` on a chosen executor (context variables carried over the same way)."""
    if INLINE:
        return fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    return await loop.run_in_executor(pool, functools.partial(ctx.run, fn, *args, **kwargs))
