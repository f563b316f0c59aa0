"""A transcript in OpenAI's response formats: json, text, srt, verbose_json, vtt."""

from __future__ import annotations

import json
import math
import zlib

from parakeet_worker.engine.transcript import Transcript
from parakeet_worker.serving.formatting import to_srt, to_vtt
from parakeet_worker.serving.openai.request import LANGUAGES, TranscriptionRequest


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 3) if data else 0.0


def verbose_json(t: Transcript, req: TranscriptionRequest, model: str) -> dict:
    """OpenAI's verbose_json. Fields Whisper has and Parakeet does not are filled honestly:
    ``seek`` 0, ``tokens`` [] (our token ids mean nothing to a Whisper client), ``temperature`` 0
    (greedy decoding), ``avg_logprob`` the mean log of the segment's word confidences,
    ``no_speech_prob`` 0."""
    out = {
        "task": "transcribe",
        "language": LANGUAGES.get(req.language or "", "unknown"),
        "duration": round(t.duration, 3),
        "text": t.text,
        "model": model,
    }
    if "segment" in req.granularities:
        out["segments"] = []
        k = 0  # words and segments are both in time order: one pass over the words in all
        for i, s in enumerate(t.segments):
            while k < len(t.words) and t.words[k].start < s.start:
                k += 1
            confidences = []
            while k < len(t.words) and t.words[k].end <= s.end:
                if t.words[k].confidence:
                    confidences.append(t.words[k].confidence)
                k += 1
            logprob = sum(math.log(max(c, 1e-6)) for c in confidences) / len(confidences) if confidences else 0.0
            out["segments"].append(
                {
                    "id": i,
                    "seek": 0,
                    "start": s.start,
                    "end": s.end,
                    "text": s.text,
                    "tokens": [],
                    "temperature": 0.0,
                    "avg_logprob": round(logprob, 4),
                    "compression_ratio": _compression_ratio(s.text),
                    "no_speech_prob": 0.0,
                }
            )
    if "word" in req.granularities:
        out["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in t.words]
    out["usage"] = _usage(t)
    return out


def _usage(t: Transcript) -> dict:
    return {"type": "duration", "seconds": math.ceil(t.duration)}


def render(t: Transcript, req: TranscriptionRequest, model: str) -> tuple[bytes, str]:
    """The response body in the asked format, and its content type. For hours of audio this is
    seconds of work: the route runs it off the event loop."""
    if req.response_format in ("json", "verbose_json"):
        obj = {"text": t.text, "usage": _usage(t)} if req.response_format == "json" else verbose_json(t, req, model)
        return json.dumps(obj, ensure_ascii=False).encode(), "application/json"
    if req.response_format == "srt":
        body = to_srt(t.segments)
    elif req.response_format == "vtt":
        body = to_vtt(t.segments)
    else:
        body = t.text + "\n"
    return body.encode(), "text/plain"
