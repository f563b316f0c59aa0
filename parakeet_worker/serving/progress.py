"""Progress updates of long batch jobs, posted through the RunPod SDK."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import runpod

from parakeet_worker.config.settings import Settings

PROGRESS_INTERVAL_S = 2.0  # long jobs: at most one progress update this often
log = logging.getLogger(__name__)


def post_progress(settings: Settings, job: dict, message: dict) -> None:
    """Post ``message`` as the job's progress (``/status``). Only on RunPod: locally the SDK
    would try to post the update to an unset URL."""
    if settings.runpod_progress_url:
        try:
            runpod.serverless.progress_update(job, message)
        except Exception:  # noqa: BLE001 - progress is best effort, never fails the job
            log.debug("progress update failed", exc_info=True)


class ProgressReporter:
    """Progress of a long job as ``{"stage", "duration", "progress"}`` (0..1), at most one update
    per ``interval_s``: each update is an HTTP post from its own thread in the SDK."""

    def __init__(
        self, job: dict, duration: float, send: Callable[[dict, dict], None], interval_s: float = PROGRESS_INTERVAL_S
    ):
        self.job, self.duration = job, round(duration, 1)
        self.send = send
        self.interval_s = interval_s
        self.last = -math.inf
        self.sent = 0

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last < self.interval_s and fraction < 1.0:
            return
        self.last = now
        self.sent += 1
        self.send(
            self.job,
            {"stage": "transcribing", "duration": self.duration, "progress": round(min(max(fraction, 0.0), 1.0), 3)},
        )
