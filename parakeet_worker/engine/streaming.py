"""Streaming decoder: many live audio streams, one batched NeMo step for all of them.

Its own module because it is the streaming half of the engine (the WebSocket protocol lives in
serving/session.py): it owns NeMo's buffered RNNT/TDT pipeline, built on the engine's
already-loaded model, and one scheduler that takes the next frame of every stream that has one
and decodes them together under the engine lock, so batch jobs and streaming steps never use
the model at the same time.

Data flows one way: ``push`` 16 kHz samples -> the scheduler cuts fixed-size frames -> one
``transcribe_step`` for all ready streams -> a ``StreamUpdate`` per stream on its queue.
A stream opened with hotwords has its boosting tree in the pipeline's biasing multi-model from its
first step to its last (or its abort); NeMo fuses it into that stream's decoding only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.errors import INTERNAL_ERROR, ASRError
from parakeet_worker.engine.engine import Engine
from parakeet_worker.engine.hotwords import Boosting, register, unregister
from parakeet_worker.engine.stream_pipeline import StreamConfig, make_frame, new_stream_id
from parakeet_worker.engine.transcript import Word
from parakeet_worker.runtime import hardware, metrics
from parakeet_worker.runtime.scheduling import STREAM, STREAM_POOL, run_in

log = logging.getLogger("streaming")


@dataclass
class StreamUpdate:
    """What one decoding step produced for one stream."""

    partial: str  # text of the current, unfinished utterance (replaces the previous partial)
    final: str | None = None  # text of an utterance that just ended (never changes afterwards)
    words: list[Word] = field(default_factory=list)  # the final's words, seconds from the stream start
    end: float = 0.0  # seconds of this stream's audio decoded so far
    last: bool = False  # the stream's closing step: nothing follows
    lag: float = 0.0  # seconds of this stream's audio received but not yet decoded (behind real time)
    error: str = ""  # the stream failed (its last update): what to tell the client, once
    fatal: bool = False  # ... because the GPU is lost: the whole worker is going away


@dataclass
class Stream:
    id: int
    updates: asyncio.Queue
    # received, not yet decoded 16 kHz sample arrays; a deque: one-sample frames must not make a step O(frames)
    pending: deque = field(default_factory=deque)
    pending_n: int = 0  # samples in ``pending``
    samples_in: int = 0  # 16 kHz samples received
    samples_done: int = 0  # samples decoded
    started: bool = False  # its first frame went to the pipeline
    closing: bool = False
    closed: bool = False
    failed: bool = False  # a step failed for this stream: it was told once, later audio is dropped
    boosting: Boosting | None = None  # the stream's hotwords
    eou_ms: int | None = None  # silence that ends an utterance in this stream (None: the decoder's)
    biasing: object = None  # NeMo's per-stream request (BiasingRequestItemConfig), id set while registered


class StreamDecoder:
    """The streaming half of the engine. Create it inside a running event loop; ``start()`` it."""

    def __init__(self, engine: Engine, config: StreamConfig | None = None):
        self.engine = engine
        self.config = config or StreamConfig.from_settings(engine.settings)
        self.pipeline = engine.stream_pipeline(self.config)  # built once, at warmup
        self.frame_samples = int(round(self.pipeline.chunk_size * SAMPLE_RATE))
        self.streams: dict[int, Stream] = {}
        self._aborted: list[Stream] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.steps = 0  # counters for benchmarks and /metrics-style summaries
        self.frames = 0
        self.step_seconds = 0.0
        self.boosted = 0  # streams whose hotword tree is in the pipeline's multi-model now
        self.failed = False  # the scheduler died: the server reports not ready

    def has_demand(self) -> bool:
        """A live stream has a full step of audio (or its end) waiting: batch passes defer to it.
        Read from the engine's threads: it only reads a flag the event loop keeps."""
        return self._demand

    def _update_demand(self) -> None:
        self._demand = any(s.pending_n >= self.frame_samples or s.closing for s in self.streams.values())

    def start(self) -> None:
        self._demand = False
        self.engine.lock.stream_demand = self.has_demand
        if self._task is None:
            self.failed = False  # (a benchmark may stop and start one decoder again)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-scheduler")
            self._task.add_done_callback(self._on_scheduler_exit)

    async def stop(self) -> None:
        self._demand = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ---- streams (called from the event loop)
    def open(self, boosting: Boosting | None = None, eou_ms: int | None = None) -> Stream:
        """A new stream; ``boosting``: its hotwords (``engine.hotword_trees.boosting``), or None;
        ``eou_ms``: the silence that ends an utterance in it (None: the decoder's ``eou_ms``).
        ``ASRError(internal_error)`` once the decoder can no longer decode (a lost GPU, a dead
        scheduler): a stream nobody would ever step must not be opened."""
        if self.failed or self.engine.lost or (self._task is not None and self._task.done()):
            raise ASRError(INTERNAL_ERROR, "this worker cannot decode streams any more; reconnect to another")
        s = Stream(new_stream_id(), asyncio.Queue(), boosting=boosting, eou_ms=eou_ms)
        if boosting is not None:
            from nemo.collections.asr.parts.context_biasing.biasing_multi_model import BiasingRequestItemConfig

            # we add and remove the tree ourselves: NeMo's automatic removal misses aborted streams
            s.biasing = BiasingRequestItemConfig(boosting_model_alpha=boosting.boost, auto_manage_multi_model=False)
        self.streams[s.id] = s
        self._count_live()
        return s

    def _count_live(self) -> None:
        """Live streams make batch work run in short passes (Engine.budget)."""
        self.engine.budget.live_streams = len(self.streams)
        metrics.LIVE_STREAMS.set(len(self.streams))

    def push(self, stream: Stream, samples: np.ndarray) -> None:
        """Queue 16 kHz float32 samples for decoding."""
        if stream.closing or stream.closed or not len(samples):
            return
        stream.pending.append(samples.astype(np.float32, copy=False))
        stream.pending_n += len(samples)
        stream.samples_in += len(samples)
        if stream.pending_n >= self.frame_samples:
            self._demand = True
            self._wake.set()

    def backlog(self, stream: Stream) -> float:
        """Seconds of this stream's audio waiting to be decoded (for backpressure)."""
        return stream.pending_n / SAMPLE_RATE

    def finish(self, stream: Stream) -> None:
        """No more audio: decode what is left, emit the last final, then free the stream."""
        if not stream.closing:
            stream.closing = True
            self._demand = True
            self._wake.set()

    async def transcribe_whole(
        self, audios: list[np.ndarray], boostings: list[Boosting | None] | None = None
    ) -> list[str | None]:
        """Each whole signal as its own stream, all at once and faster than real time (benchmarks
        and tests; the decoder must be started): each stream's finals joined, None where it failed."""
        streams = [self.open(b) for b in (boostings or [None] * len(audios))]
        for s, a in zip(streams, audios):
            self.push(s, a)
            self.finish(s)
        texts: list[str | None] = []
        for s in streams:
            finals: list[str] = []
            while True:
                up = await s.updates.get()
                if up.final:
                    finals.append(up.final)
                if up.last:
                    break
            texts.append(None if up.error else " ".join(finals))
        return texts

    def abort(self, stream: Stream) -> None:
        """Drop a stream at once (client gone): its pipeline state is freed before the next step."""
        if self.streams.pop(stream.id, None) is not None:
            self._count_live()
            stream.closed = True
            stream.pending, stream.pending_n = deque(), 0
            if stream.started:
                self._aborted.append(stream)
                self._wake.set()  # free its pipeline state now, not at the next busy moment

    # ---- the scheduler
    def _ready(self) -> list[Stream]:
        return [s for s in self.streams.values() if s.pending_n >= self.frame_samples or s.closing]

    async def _run(self) -> None:
        while True:
            # a stream aborted during the last step is freed now, not at the next busy moment
            if not self._ready() and not self._aborted:
                self._demand = False
                self._wake.clear()
                await self._wake.wait()
                # streams fed in real time become ready at different moments: give the others
                # a moment to fill their frame, so one forward pass serves them all
                await asyncio.sleep(self.config.max_wait_ms / 1000.0)
            batch = []
            try:
                self._free_aborted()
                batch = self._ready()
                if not batch:
                    continue
                frames = [self._next_frame(s) for s in batch]
                t0 = time.perf_counter()
                # its own one-thread executor: a streaming step never waits for a free thread
                outputs = await run_in(STREAM_POOL, self._step, batch, frames)
                took = time.perf_counter() - t0
                self.step_seconds += took
                self.steps += 1
                self.frames += len(frames)
                metrics.stream_step(
                    took, sum(f.length if f.length >= 0 else self.frame_samples for f in frames) / SAMPLE_RATE
                )
                for s, frame, out in zip(batch, frames, outputs):
                    self._deliver(s, frame, out)
                self._update_demand()
                metrics.STREAM_LAG.set(max((x.pending_n for x in self.streams.values()), default=0) / SAMPLE_RATE)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed step must not kill the scheduler
                if not await self._recover(batch, frames, exc):
                    return  # the GPU is lost: every stream was told, nothing can be decoded any more

    async def _recover(self, batch: list[Stream], frames: list, exc: Exception) -> bool:
        """A step failed. A lost GPU fails every stream (fatal) and stops the scheduler (False).
        Otherwise the streams of the step are retried one by one, as the batch path retries clip
        by clip: only a stream that fails alone is failed, the others keep their results."""
        if hardware.is_device_lost(exc) or self.engine.lost:
            self._fail_all()
            return False
        if len(batch) == 1:
            log.warning("streaming step failed for stream %d: %s", batch[0].id, type(exc).__name__, exc_info=exc)
        else:
            log.warning(
                "a streaming step over %d streams failed (%s): retrying them one by one",
                len(batch),
                type(exc).__name__,
                exc_info=exc,
            )
        if isinstance(exc, torch.OutOfMemoryError):
            await run_in(STREAM_POOL, self.engine.free_memory)  # the next step (and batch jobs) get the cache back
        if len(batch) == 1:
            self._fail(batch[0])
            return True
        for s, frame in zip(batch, frames):
            if s.closed:  # aborted meanwhile
                continue
            try:
                out = await run_in(STREAM_POOL, self._step, [s], [frame])
            except asyncio.CancelledError:
                raise
            except Exception as again:  # noqa: BLE001 - this stream's own failure
                if hardware.is_device_lost(again) or self.engine.lost:
                    self._fail_all()
                    return False
                log.warning("streaming step failed for stream %d alone: %s", s.id, type(again).__name__)
                self._fail(s)
                continue
            self._deliver(s, frame, out[0])
        self._update_demand()
        return True

    def _fail(self, s: Stream, fatal: bool = False) -> None:
        """End a stream whose decoding failed: its state is freed and its reader gets one update
        with the error (``fatal``: the GPU is lost)."""
        self.abort(s)
        with contextlib.suppress(Exception):  # on a lost GPU freeing may fail too: nothing to keep
            self._free_aborted()
        s.failed = True
        message = (
            "the GPU of this worker failed; it is being replaced: reconnect"
            if fatal
            else "decoding failed for this stream; send stop, then start again"
        )
        s.updates.put_nowait(
            StreamUpdate(partial="", end=s.samples_done / SAMPLE_RATE, last=True, error=message, fatal=fatal)
        )

    def _fail_all(self) -> None:
        """The GPU is lost: every live stream gets a fatal error now, and no stream opens again."""
        self.failed = True
        self._demand = False
        streams = list(self.streams.values())
        log.error("GPU lost: failing %d live stream(s)", len(streams))
        for s in streams:
            self._fail(s, fatal=True)

    def _on_scheduler_exit(self, task: asyncio.Task) -> None:
        """Should the scheduler ever end (stopped, a lost GPU, a bug), no reader may wait for it
        forever: a stream still open gets a fatal error, and no stream opens again."""
        self.failed = True
        self._demand = False
        if not task.cancelled() and task.exception() is not None:
            log.error("the streaming scheduler died", exc_info=task.exception())
        for s in list(self.streams.values()):
            s.closed = s.failed = True
            s.updates.put_nowait(
                StreamUpdate(partial="", last=True, error="the streaming decoder stopped; reconnect", fatal=True)
            )
        self.streams.clear()
        self._count_live()

    def _free_aborted(self) -> None:
        while self._aborted:
            s = self._aborted.pop()
            with contextlib.suppress(KeyError, AttributeError):
                self.pipeline.delete_state(s.id)
            with contextlib.suppress(KeyError, AttributeError):
                self.pipeline.bufferer.rm_bufferer(s.id)
            self._unregister(s)

    def _next_frame(self, s: Stream):
        n = self.frame_samples
        take, got = [], 0
        while s.pending and got < n:
            head = s.pending[0]
            part = head[: n - got]
            if len(part) == len(head):
                s.pending.popleft()
            else:
                s.pending[0] = head[len(part) :]
            take.append(part)
            got += len(part)
        s.pending_n -= got
        samples = np.concatenate(take) if take else np.zeros(0, np.float32)
        last = s.closing and s.pending_n == 0
        length = len(samples)
        if length < n:  # the last frame: zero-padded to the pipeline's fixed size, true length given
            samples = np.concatenate([samples, np.zeros(n - length, np.float32)])
        first = not s.started
        s.started = True
        s.samples_done += length
        eou_ms = self.config.eou_ms if s.eou_ms is None else s.eou_ms
        return make_frame(samples, s.id, first, last, length, eou_ms, s.biasing)

    def _step(self, batch: list[Stream], frames):
        with self.engine.exclusive(priority=STREAM):
            for s, frame in zip(batch, frames):
                # (a stream retried alone after a failed step may have its tree in already)
                if frame.is_first and s.biasing is not None and s.biasing.multi_model_id is None:
                    s.biasing.multi_model_id = register(self._multi_model, [s.boosting])[0]
                    self.boosted += 1
            try:
                return self.pipeline.transcribe_step(frames)
            finally:
                for s, frame in zip(batch, frames):
                    if frame.is_last:
                        self._unregister(s)

    @property
    def _multi_model(self):
        return self.pipeline.decoding_computer.biasing_multi_model

    def _unregister(self, s: Stream) -> None:
        """Take the stream's hotword tree out of the multi-model (scheduler only, between steps)."""
        if s.biasing is not None and s.biasing.multi_model_id is not None:
            unregister(self._multi_model, [s.biasing.multi_model_id])
            s.biasing.multi_model_id = None
            self.boosted -= 1

    def _deliver(self, s: Stream, frame, out) -> None:
        final = None
        words: list[Word] = []
        if out.final_transcript or frame.is_last:
            final = out.final_transcript.strip()
            words = [
                Word(
                    w.text.strip(),
                    round(float(w.start), 3),
                    round(float(w.end), 3),
                    round(float(w.conf), 4) if w.conf else None,
                )
                for w in out.final_segments or []
            ]
        update = StreamUpdate(
            partial=out.partial_transcript.strip(),
            final=final,
            words=words,
            end=s.samples_done / SAMPLE_RATE,
            last=frame.is_last,
            lag=s.pending_n / SAMPLE_RATE,
        )
        if frame.is_last:
            s.closed = True
            self.streams.pop(s.id, None)
            self._count_live()
        if not (s.closed and not frame.is_last):  # an aborted stream gets nothing more
            s.updates.put_nowait(update)
