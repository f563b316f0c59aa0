"""The worker's lifecycle: ready -> draining -> stopped, and SIGTERM/SIGINT handling.

RunPod stops a worker with SIGTERM at any moment. Every server and job loop consults the one
``LIFECYCLE`` object instead of handling signals itself:

- ``draining`` true: refuse new work (WebSocket upgrades -> HTTP 503, ``/ping`` -> 503, new jobs
  -> refused), flush open streams (last final, ``done``, close 1001), let in-flight batch jobs
  finish;
- ``on_drain(callback)``: run ``callback()`` once when the drain begins (e.g. a WebSocket server
  flushing its sessions);
- ``DRAIN_TIMEOUT_S`` bounds the whole drain: a watchdog ends the process if it has not exited.

A lost GPU (``poison``): a non-OOM CUDA error leaves the process unable to run the model again.
The engine reports it here once; the drain then begins at once with a short budget
(``POISON_DRAIN_S``): streams and requests are failed (not flushed: nothing can be decoded),
``/ping`` answers 503, and the process exits with ``EXIT_DEVICE_LOST`` so the platform replaces it.

Server-agnostic on purpose: the aiohttp server (serving/app.py, serving/websocket_job.py) and the
RunPod SDK's own loop (rp_handler.py) all call ``install_signal_handlers()`` (which chains to
handlers already installed, so the SDK's own shutdown still runs) and read ``LIFECYCLE.draining``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from parakeet_worker.runtime import metrics

log = logging.getLogger("lifecycle")

POISON_DRAIN_S = 5.0  # after a lost GPU: time to fail open streams and answer requests in flight
EXIT_DEVICE_LOST = 3  # the process exit code after a lost GPU (0: a normal drain, 1: a drain cut short)


_DRAIN_TASKS: set[asyncio.Future] = set()  # drain hooks' coroutines while they run


class Lifecycle:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.drain_started: float | None = None  # time.monotonic() of the first signal
        self.reason = ""
        self._callbacks: list[tuple[asyncio.AbstractEventLoop | None, Callable[[], object]]] = []
        self._watchdog: threading.Timer | None = None
        self.signals = 0
        self.poisoned = ""  # why the accelerator is unusable ("" while it is fine)
        # a drain past its budget ends the process; off where the process is not a worker (an
        # in-process benchmark or test keeps running to report what happened)
        self.exit_on_overrun = True

    @property
    def draining(self) -> bool:
        return self.drain_started is not None

    @property
    def exit_code(self) -> int:
        """What the process exits with once drained: EXIT_DEVICE_LOST after a lost GPU, else 0."""
        return EXIT_DEVICE_LOST if self.poisoned else 0

    def poison(self, reason: str) -> bool:
        """The accelerator failed for good (``reason``: the error, one line). The first call logs
        it, marks the process unhealthy and starts a short drain; later calls change nothing.
        Returns True the first time. Safe from any thread."""
        with self._lock:
            if self.poisoned:
                return False
            self.poisoned = reason.splitlines()[0][:300] if reason else "device error"
        log.critical(
            "GPU failed (%s): failing open streams and requests, exiting with code %d for a replacement",
            self.poisoned,
            EXIT_DEVICE_LOST,
        )
        metrics.event("device_lost", reason=self.poisoned)
        metrics.DEVICE_LOST.set(1)
        if not self.begin_drain("device_lost", POISON_DRAIN_S):
            # a drain was already running: its watchdog may be minutes away; a lost GPU
            # has nothing left to finish, so bound it by the short budget too
            self._arm_watchdog(POISON_DRAIN_S)
        return True

    def on_drain(self, callback: Callable[[], object], loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Call ``callback()`` when the drain begins (at once if it has). A coroutine function
        is scheduled on ``loop`` (default: the running loop)."""
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        with self._lock:
            if not self.draining:
                self._callbacks.append((loop, callback))
                return
        self._fire(loop, callback)

    def begin_drain(self, reason: str = "shutdown", timeout_s: float | None = None) -> bool:
        """Start draining (idempotent; thread- and signal-safe enough: it only sets state and
        schedules callbacks). Returns True the first time."""
        with self._lock:
            if self.draining:
                return False
            self.drain_started = time.monotonic()
            self.reason = reason
            callbacks, self._callbacks = self._callbacks, []
        metrics.DRAINS.inc()
        metrics.DRAINING.set(1)
        metrics.event("drain", reason=reason, timeout_s=timeout_s)
        if timeout_s is not None:
            self._arm_watchdog(timeout_s)
        for loop, cb in callbacks:
            self._fire(loop, cb)
        return True

    def remaining(self, timeout_s: float) -> float:
        """Seconds left of a drain bounded by ``timeout_s`` (the full time before it starts)."""
        if self.poisoned:  # nothing left to finish after a lost GPU: the short budget
            timeout_s = min(timeout_s, POISON_DRAIN_S)
        if self.drain_started is None:
            return timeout_s
        return max(0.0, timeout_s - (time.monotonic() - self.drain_started))

    @staticmethod
    def _fire(loop, cb) -> None:
        def run():
            try:
                res = cb()
                if asyncio.iscoroutine(res):
                    # kept until done: the loop holds only a weak reference to a task
                    task = asyncio.ensure_future(res)
                    _DRAIN_TASKS.add(task)
                    task.add_done_callback(_DRAIN_TASKS.discard)
            except Exception:  # noqa: BLE001 - one failing hook must not stop the others
                log.exception("drain callback failed")

        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(run)
        else:
            run()

    def _arm_watchdog(self, timeout_s: float) -> None:
        """If the process is still alive ``timeout_s`` (+1 s to log) after the drain began,
        work was left unfinished: say so and exit (code 1: the drain did not complete)."""
        if not self.exit_on_overrun:
            return

        def expire():
            log.error("drain did not finish within %.1f s: exiting with work unfinished", timeout_s)
            logging.shutdown()
            os._exit(EXIT_DEVICE_LOST if self.poisoned else 1)

        self._watchdog = threading.Timer(timeout_s + 1.0, expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def reset(self) -> None:
        """Back to ready (tests only: one process runs several servers)."""
        with self._lock:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self.drain_started = None
            self.reason = ""
            self.poisoned = ""
            self._callbacks = []
            self.signals = 0
        metrics.DRAINING.set(0)
        metrics.DEVICE_LOST.set(0)


LIFECYCLE = Lifecycle()


def exit_now(code: int) -> None:
    """End the process once its work is done, without the interpreter's teardown of torch and
    NeMo objects (15-20 s on a busy CPU: longer than many drain budgets)."""
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def install_signal_handlers(timeout_s: float) -> bool:
    """SIGTERM/SIGINT begin the drain, then call whatever handler was installed before (the
    RunPod SDK's stops taking jobs and waits for running ones; uvicorn's stops its server). With
    no such handler, the drain's owner decides when to exit; a repeated signal changes nothing
    (the watchdog bounds the drain). Main thread only; returns False elsewhere. Idempotent: a
    handler of ours is not wrapped again, so servers may call it each time they start."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if getattr(previous, "_asr_drain", False):
            continue
        if previous is signal.default_int_handler:  # KeyboardInterrupt would cut the drain short
            previous = None

        def handler(signum, frame, previous=previous):
            LIFECYCLE.signals += 1
            LIFECYCLE.begin_drain(signal.Signals(signum).name, timeout_s)
            if callable(previous):
                previous(signum, frame)

        handler._asr_drain = True  # type: ignore[attr-defined]
        signal.signal(sig, handler)
    return True
