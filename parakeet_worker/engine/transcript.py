"""What a transcription produces: words, segments and the transcript, plus the segmenting rule.

Plain data with no model or torch dependency, so formatting and the client side can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEGMENT_GAP_S = 0.8  # a pause this long between words starts a new segment
SEGMENT_MAX_S = 15.0  # a segment never grows past this


@dataclass
class Word:
    word: str
    start: float
    end: float
    confidence: float | None = None


@dataclass
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    text: str
    duration: float
    words: list[Word] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    attention: str = "full"  # "full" or "local"
    chunks: int = 1  # long-audio windows merged into this transcript (the output field "chunks")
    # A merged long job keeps its windows' own transcripts (times relative to each window) for
    # diagnostics such as the seam check in bench/long_audio_bench.py; never in the job output.
    parts: list[Transcript] = field(default_factory=list, repr=False, compare=False)


def make_segments(words: list[Word]) -> list[Segment]:
    """Group words into segments at sentence ends, pauses over SEGMENT_GAP_S, or every ~SEGMENT_MAX_S."""
    segments: list[Segment] = []
    cur: list[Word] = []
    for w in words:
        if cur and (
            w.start - cur[-1].end > SEGMENT_GAP_S or w.end - cur[0].start > SEGMENT_MAX_S or cur[-1].word[-1:] in ".?!"
        ):
            segments.append(Segment(cur[0].start, cur[-1].end, " ".join(x.word for x in cur)))
            cur = []
        cur.append(w)
    if cur:
        segments.append(Segment(cur[0].start, cur[-1].end, " ".join(x.word for x in cur)))
    return segments


def from_hypothesis(hyp, duration: float, attention: str) -> Transcript:
    """A NeMo hypothesis (with word timestamps and confidences) as a Transcript."""
    raw = hyp.timestamp.get("word", []) if isinstance(hyp.timestamp, dict) else []
    conf = list(getattr(hyp, "word_confidence", None) or [])
    words, last = [], 0.0
    for k, w in enumerate(raw):
        # clamp into [0, duration] and keep starts monotone; TDT frames are 80 ms
        start = min(max(float(w["start"]), last), duration)
        end = min(max(float(w["end"]), start), duration)
        c = float(conf[k]) if k < len(conf) else None
        words.append(Word(str(w["word"]), round(start, 3), round(end, 3), None if c is None else round(c, 4)))
        last = start
    text = hyp.text if isinstance(hyp.text, str) else " ".join(w.word for w in words)
    return Transcript(text.strip(), round(duration, 3), words, make_segments(words), attention)
