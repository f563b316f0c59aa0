"""Transcript -> the batch job's output: JSON fields, plain text, SRT and WebVTT subtitles."""

from __future__ import annotations

from dataclasses import asdict

from parakeet_worker.engine.transcript import Segment, Transcript


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(segments: list[Segment]) -> str:
    blocks = [f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n" for i, s in enumerate(segments, 1)]
    return "\n".join(blocks)


def to_vtt(segments: list[Segment]) -> str:
    blocks = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in segments]
    return "WEBVTT\n\n" + "\n".join(blocks)


def job_output(t: Transcript, *, timestamps: bool, output_format: str, model: str, processing_time: float) -> dict:
    """The batch output (docs/PROTOCOL.md). Words and segments only when timestamps were asked for;
    ``output_format`` text drops them too, srt/vtt add the subtitle text under their own key."""
    out: dict = {"text": t.text, "duration": round(t.duration, 3), "processing_time": round(processing_time, 3)}
    if timestamps and output_format != "text":
        out["segments"] = [asdict(s) for s in t.segments]
        out["words"] = [asdict(w) for w in t.words]
    if output_format == "srt":
        out["srt"] = to_srt(t.segments)
    elif output_format == "vtt":
        out["vtt"] = to_vtt(t.segments)
    out.update({"model": model, "attention": t.attention, "chunks": t.chunks})
    return out
