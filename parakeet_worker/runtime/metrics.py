"""Prometheus metrics of the worker, and the one-line structured logs of jobs and sessions.

Server-agnostic: whichever HTTP server answers ``GET /metrics`` calls ``render()`` and returns
its bytes with ``CONTENT_TYPE``. Code that does the work only calls the small recording
functions below (``forward_pass``, ``stream_step``, ``error``, ``event``,
``JobRecord``), so no module needs to know about Prometheus.

Nothing here ever logs or labels audio or transcripts: only ids, durations, counts and codes.
"""

from __future__ import annotations

import json
import logging
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST  # what /metrics answers with

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # RSS, open fds, CPU seconds of this process
PlatformCollector(registry=REGISTRY)

ACTIVE_SESSIONS = Gauge("asr_active_sessions", "Open WebSocket sessions", registry=REGISTRY)
SESSIONS = Gauge("asr_sessions", "Open WebSocket sessions by dialect", ["dialect"], registry=REGISTRY)
LIVE_STREAMS = Gauge("asr_live_streams", "Streams being decoded (started, not yet done)", registry=REGISTRY)
JOBS_QUEUED = Gauge("asr_jobs_queued", "Batch clips waiting for the engine", registry=REGISTRY)
JOBS_RUNNING = Gauge("asr_jobs_running", "Batch jobs in progress (decoding or transcribing)", registry=REGISTRY)
REQUESTS = Counter(
    "asr_requests", "Finished batch jobs and stream sessions by outcome", ["kind", "outcome"], registry=REGISTRY
)
AUDIO_SECONDS = Counter("asr_audio_seconds", "Seconds of audio transcribed", ["kind"], registry=REGISTRY)
COMPUTE_SECONDS = Counter("asr_compute_seconds", "Seconds the model spent on that audio", ["kind"], registry=REGISTRY)
RTF = Gauge(
    "asr_real_time_factor", "Compute seconds per audio second of the last forward pass", ["kind"], registry=REGISTRY
)
STEP_SECONDS = Histogram(
    "asr_stream_step_seconds",
    "Duration of one batched streaming decoding step",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
ENGINE_WAIT = Histogram(
    "asr_engine_wait_seconds",
    "Time a caller waited for the engine (fairness)",
    ["priority"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
STREAM_LAG = Gauge("asr_stream_lag_seconds_max", "Largest undecoded backlog among live streams", registry=REGISTRY)
ERRORS = Counter("asr_errors", "Errors returned to clients, by code", ["code"], registry=REGISTRY)
REFUSALS = Counter(
    "asr_refusals", "Requests refused before any work (capacity, loading, draining)", ["reason"], registry=REGISTRY
)
DRAINS = Counter("asr_drains", "Graceful drains started (SIGTERM/SIGINT)", registry=REGISTRY)
DRAINING = Gauge("asr_draining", "1 while the worker drains before exiting", registry=REGISTRY)
DEVICE_LOST = Gauge("asr_device_lost", "1 once the GPU failed for good (the worker is exiting)", registry=REGISTRY)

log = logging.getLogger("asr.events")


def render() -> bytes:
    """The Prometheus exposition text (serve it with ``CONTENT_TYPE``)."""
    return generate_latest(REGISTRY)


def forward_pass(kind: str, audio_s: float, compute_s: float) -> None:
    """One forward pass of ``kind`` ('batch' or 'stream') over ``audio_s`` seconds of audio."""
    AUDIO_SECONDS.labels(kind).inc(audio_s)
    COMPUTE_SECONDS.labels(kind).inc(compute_s)
    if audio_s > 0:
        RTF.labels(kind).set(compute_s / audio_s)


def stream_step(seconds: float, audio_s: float) -> None:
    STEP_SECONDS.observe(seconds)
    forward_pass("stream", audio_s, seconds)


def error(code: str) -> None:
    ERRORS.labels(code).inc()


def event(event_name: str, **fields) -> None:
    """One structured log line: ``{"event": event_name, ...}`` as JSON (ids, durations, codes only)."""
    log.info(json.dumps({"event": event_name, **fields}, separators=(",", ":"), default=str))


class JobRecord:
    """Times one batch job and writes its log line and counters when it ends::

    with metrics.JobRecord(job_id) as rec:
        ...; rec.audio_s = 12.3
        rec.fail(code)       # or leave it: the outcome is "ok" unless an exception escapes
    """

    def __init__(self, job_id: str, kind: str = "batch"):
        self.id, self.kind = job_id, kind
        self.audio_s = 0.0
        self.code: str | None = None
        self.t0 = time.monotonic()

    def fail(self, code: str) -> None:
        self.code = code

    def __enter__(self) -> JobRecord:
        JOBS_RUNNING.inc()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        JOBS_RUNNING.dec()
        if exc_type is not None and self.code is None:
            self.code = "cancelled" if exc_type.__name__ == "CancelledError" else "internal_error"
        outcome = "ok" if self.code is None else "cancelled" if self.code == "cancelled" else "error"
        REQUESTS.labels(self.kind, outcome).inc()
        if self.code and self.code != "cancelled":
            error(self.code)
        event(
            "job",
            id=self.id,
            kind=self.kind,
            outcome=self.code or "ok",
            seconds=round(time.monotonic() - self.t0, 3),
            audio_s=round(self.audio_s, 3),
        )
