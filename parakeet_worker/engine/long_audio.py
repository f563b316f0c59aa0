"""Running one long clip in windows: where it is cut (windows.py), how the windows are fed to the
model, and how they are merged back into one transcript.

Every windowed job takes this path, whatever asked for the windows: ``chunk_long_audio``, local
attention (a clip past the full-attention limit, or ``use_local_attention``), or a live stream that
caps batch passes to about one streaming step (``Engine.budget``). The attention the job reports
is the attention every window ran with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.engine.hotwords import Boosting
from parakeet_worker.engine.transcript import Transcript
from parakeet_worker.engine.windows import merge_windows, window_spans
from parakeet_worker.runtime.scheduling import BATCH_POOL, BLOCKING_POOL, run_in

BATCH_AUDIO_BUDGET_S = 1200.0  # padded seconds of audio in one forward pass


def cut(signal: np.ndarray, window_s: float, overlap_s: float | None = None):
    """(spans in seconds, the signal's pieces)."""
    spans = window_spans(len(signal) / SAMPLE_RATE, window_s, overlap_s)
    return spans, [signal[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)] for a, b in spans]


def first_failure(results: list) -> list:
    """``results`` of ``Engine.transcribe_batch`` for one job's windows: the first failure raised."""
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results


def merged(spans, results: list[Transcript], duration: float, attention: str) -> Transcript:
    t = results[0] if len(results) == 1 else merge_windows(spans, results)
    if len(results) > 1:
        t.parts = results
    t.duration = round(duration, 3)
    t.attention = attention
    return t


def run_windows(
    engine,
    signal: np.ndarray,
    attention: str,
    boosting: Boosting | None,
    window_s: float,
    overlap_s: float | None = None,
) -> Transcript:
    """Synchronous: one clip in consecutive passes of ``window_s`` each (a clip that fits runs in
    one pass), every pass with ``attention``. Called with no lock held (each pass takes it)."""
    spans, pieces = cut(signal, window_s, overlap_s)
    parts = [first_failure(engine.transcribe_batch([p], attention, [boosting]))[0] for p in pieces]
    return merged(spans, parts, len(signal) / SAMPLE_RATE, attention)


def run_pieces(engine, pieces: list[np.ndarray], attention: str, boosting: Boosting | None) -> list[Transcript]:
    """Windows of a long job in one pass; while streams are live, each in passes of the live
    budget instead, so no stream waits for a long pass (an out-of-memory window comes back as its
    ASRError)."""
    if not engine.budget.live:
        return engine.transcribe_batch(pieces, attention, [boosting] * len(pieces))
    return [run_windows(engine, p, attention, boosting, engine.budget.audio_s()) for p in pieces]


async def transcribe_windows(
    engine,
    signal: np.ndarray,
    window_s: float,
    overlap_s: float | None,
    attention: str,
    on_progress: Callable[[float], None] | None,
    boosting: Boosting | None,
) -> Transcript:
    """A long job: full-attention windows go through the batcher one wave at a time (jobs that
    arrive meanwhile are queued before the next wave, so a 3 h file does not hold up a 3 s one);
    local-attention windows run off the batcher, a few per pass. Cancelling leaves nothing queued."""
    duration = len(signal) / SAMPLE_RATE
    spans, pieces = cut(signal, window_s, overlap_s)
    results: list[Transcript] = []
    pending: list[asyncio.Future] = []

    def progressed():
        if on_progress:
            on_progress(spans[len(results) - 1][1] / duration)

    try:
        if attention == "full":
            # while streams are live, a wave is one pass: jobs queued meanwhile go in between
            wave = max(1, int(engine.budget.audio_s() // window_s)) if engine.budget.live else engine.batch_size
            for k in range(0, len(pieces), wave):
                pending = [asyncio.ensure_future(engine.submit(p, boosting)) for p in pieces[k : k + wave]]
                for fut in pending:
                    results.append(await fut)
                    progressed()
        else:
            per_pass = max(1, min(engine.batch_size, int(BATCH_AUDIO_BUDGET_S // window_s)))
            for k in range(0, len(pieces), per_pass):
                done = await run_in(BATCH_POOL, run_pieces, engine, pieces[k : k + per_pass], attention, boosting)
                results += first_failure(done)  # a window that never fits fails the job (out_of_memory)
                progressed()
    finally:
        for fut in pending:
            fut.cancel()
    if len(results) == 1:
        return merged(spans, results, duration, attention)
    # the merge is O(seams x words): seconds for hours of audio, so never on the event loop
    return await run_in(BLOCKING_POOL, merged, spans, results, duration, attention)
