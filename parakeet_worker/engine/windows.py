"""Long audio: cut into overlapping windows, then merge the windows' words on one time line.

A job's ``chunk_long_audio``/``chunk_duration`` (and local attention above its threshold) run the
audio in windows so that memory is that of one window whatever the duration; this module decides
where the windows lie and where each seam between two windows goes.
"""

from __future__ import annotations

import math

import numpy as np

from parakeet_worker.engine.transcript import Transcript, Word, make_segments

LOCAL_WINDOW_OVERLAP_S = 16.0  # local-attention windows overlap by more than the attention reach (10 s)
SEAM_EDGE_S = 0.3  # words this close to a window's cut may be fragments: never put a seam there
SEAM_TRUST_S = 1.0  # a word heard by one window only counts if this far inside that window
SEAM_COVER_S = 0.08  # one encoder frame: timestamps of the same word in two windows differ by about this


def window_spans(duration: float, window_s: float, overlap: float | None = None) -> list[tuple[float, float]]:
    """Windows of ``window_s`` seconds that overlap by at least 2 s (wider than any word), so a
    word cut by one window's edge lies whole inside its neighbour."""
    if duration <= window_s:
        return [(0.0, duration)]
    overlap = min(max(2.0, 0.2 * window_s if overlap is None else overlap), window_s / 2)
    step = window_s - overlap
    n = max(1, math.ceil((duration - overlap) / step))
    return [(i * step, min(i * step + window_s, duration)) for i in range(n)]


def seam_between(left: list[Word], right: list[Word], lo: float, hi: float) -> float:
    """Where to switch from the left window's words to the right one's, inside their overlap
    [lo, hi] (absolute seconds): the point farthest from every word centre that either window
    heard, i.e. a pause between words. Both windows then agree on which side each word falls,
    so a word is neither lost nor doubled even when their timestamps differ slightly."""
    # Only the middle half of the overlap: there both windows have context on both sides.
    edge = max(SEAM_EDGE_S, (hi - lo) / 4)
    a, b = lo + edge, hi - edge
    if b <= a:
        return (lo + hi) / 2
    mids = [(w.start + w.end) / 2 for w in left + right if w.end > lo and w.start < hi]
    grid = np.arange(a, b, 0.02)
    if not mids or grid.size == 0:
        return (lo + hi) / 2
    dist = np.min(np.abs(grid[:, None] - np.array(mids)[None, :]), axis=1)
    return float(grid[int(np.argmax(dist))])


def _mid(w: Word) -> float:
    return (w.start + w.end) / 2


def merge_windows(spans: list[tuple[float, float]], results: list[Transcript]) -> Transcript:
    """Words of overlapping windows on one time line, each word taken from exactly one window:
    the left one's before the seam, the right one's after it. Where the two windows disagree
    near a seam (one heard a word the other did not), the word is kept if the window that heard
    it had it well inside its span and no chosen word covers that time."""
    shifted = [
        [Word(w.word, round(start + w.start, 3), round(start + w.end, 3), w.confidence) for w in r.words]
        for (start, _), r in zip(spans, results)
    ]
    seams = [seam_between(shifted[i], shifted[i + 1], spans[i + 1][0], spans[i][1]) for i in range(len(spans) - 1)]
    bounds = [-math.inf] + seams + [math.inf]
    words = [w for i, ws in enumerate(shifted) for w in ws if bounds[i] <= _mid(w) < bounds[i + 1]]
    extra = []
    for i, seam in enumerate(seams):
        lo, hi = spans[i + 1][0], spans[i][1]
        others = [w for w in shifted[i] if seam <= _mid(w) < hi - SEAM_TRUST_S] + [
            w for w in shifted[i + 1] if lo + SEAM_TRUST_S <= _mid(w) < seam
        ]
        near = [c for c in words if c.end > lo - 1.0 and c.start < hi + 1.0]
        extra += [
            w
            for w in others
            if not any(c.start - SEAM_COVER_S < w.end and w.start < c.end + SEAM_COVER_S for c in near)
        ]
    if extra:
        words = sorted(words + extra, key=_mid)
    for a, b in zip(words, words[1:]):  # keep starts monotone across seams
        if b.start < a.start:
            b.start = a.start
            b.end = max(b.end, b.start)
    return Transcript(" ".join(w.word for w in words), spans[-1][1], words, make_segments(words), chunks=len(spans))
