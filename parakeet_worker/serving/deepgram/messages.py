"""Deepgram's shapes: the query parameters of ``/v1/listen`` (live and prerecorded) as
``ListenOptions``, and the messages and responses the official SDK parses (``Results``,
``UtteranceEnd``, ``SpeechStarted``, ``Metadata``, ``Error``, the prerecorded response).

Parakeet writes cased, punctuated text, so ``punctuate`` and ``smart_format`` are accepted and change
nothing; a word's ``punctuated_word`` is the word as written, ``word`` its lowercase form without
punctuation (Deepgram's own convention). Whatever ``model`` a client names is served by the loaded
model, and every message names the real one.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass

from parakeet_worker.engine.hotwords import HotwordError, Hotwords, parse_hotwords
from parakeet_worker.engine.transcript import Transcript, Word

MODEL_UUID_NAMESPACE = uuid.UUID("6f1b8c52-4a47-4d2a-9a55-7f3b6a0c2e11")
BOOLEAN = {"true": True, "false": False}
# the live socket's end-of-utterance silence is at least one 80 ms decoder frame
MIN_ENDPOINTING_MS = 80


class ListenError(ValueError):
    """A query parameter the worker cannot honour: Deepgram's 400, worded for the client."""


@dataclass(frozen=True)
class ListenOptions:
    model: str
    language: str | None
    encoding: str | None  # "linear16", or None: a WAV header is read, else linear16 is assumed
    sample_rate: int
    interim_results: bool
    endpointing_ms: int | None  # None: endpointing=false (only longer pauses end an utterance)
    utterance_end_ms: int | None
    vad_events: bool
    hotwords: Hotwords | None


def _flag(query, name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() not in BOOLEAN:
        raise ListenError(f"{name} must be true or false")
    return BOOLEAN[raw.lower()]


def _int(query, name: str, lo: int, hi: int) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ListenError(f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise ListenError(f"{name} must be from {lo} to {hi}")
    return value


def parse_options(query, default_eou_ms: int) -> ListenOptions:
    """``/v1/listen``'s query (a multidict: ``keyterm`` repeats). Accepted and ignored: ``punctuate``,
    ``smart_format``, ``diarize``, ``numerals``, ``profanity_filter``, ``tag``, ``mip_opt_out`` and the
    other formatting switches; refused: what would silently change the audio's meaning."""
    encoding = query.get("encoding")
    if encoding is not None and encoding.lower() != "linear16":
        raise ListenError(f"encoding '{encoding[:40]}' is not supported: send linear16 (PCM16 little-endian)")
    channels = _int(query, "channels", 1, 8)
    if channels not in (None, 1):
        raise ListenError("only mono audio is supported (channels=1)")
    if _flag(query, "multichannel", False):
        raise ListenError("multichannel is not supported: send one channel")
    endpointing_raw = query.get("endpointing")
    if endpointing_raw is not None and endpointing_raw.lower() == "false":
        endpointing = None
    elif endpointing_raw is None:
        endpointing = default_eou_ms
    else:
        endpointing = max(MIN_ENDPOINTING_MS, _int(query, "endpointing", 0, 60_000))
    terms = [t for t in query.getall("keyterm", []) if t.strip()]
    terms += [k.rsplit(":", 1)[0] for k in query.getall("keywords", []) if k.strip()]  # "word:boost" (older)
    try:
        hotwords = parse_hotwords(terms, None) if terms else None
    except HotwordError as exc:
        raise ListenError(str(exc)) from None
    return ListenOptions(
        model=query.get("model", ""),
        language=query.get("language"),
        encoding=encoding,
        sample_rate=_int(query, "sample_rate", 8000, 48000) or 16000,
        interim_results=_flag(query, "interim_results", False),
        endpointing_ms=endpointing,
        utterance_end_ms=_int(query, "utterance_end_ms", 1000, 60_000),
        vad_events=_flag(query, "vad_events", False),
        hotwords=hotwords,
    )


def model_uuid(model_name: str) -> str:
    return str(uuid.uuid5(MODEL_UUID_NAMESPACE, model_name))


def model_info(model_name: str) -> dict:
    return {"name": model_name, "version": "1", "arch": "parakeet-tdt"}


def plain_word(text: str) -> str:
    """Deepgram's ``word``: lowercase, without the punctuation around it."""
    return text.strip(".,!?;:\"'()[]{}«»„“”‘’¿¡").lower() or text.lower()


def words_json(words: list[Word]) -> list[dict]:
    return [
        {
            "word": plain_word(w.word),
            "start": round(w.start, 3),
            "end": round(w.end, 3),
            "confidence": round(w.confidence if w.confidence is not None else 1.0, 4),
            "punctuated_word": w.word,
        }
        for w in words
    ]


def confidence(words: list[Word]) -> float:
    known = [w.confidence for w in words if w.confidence is not None]
    return round(sum(known) / len(known), 4) if known else (1.0 if words else 0.0)


def results(
    request_id: str,
    model_name: str,
    text: str,
    words: list[Word],
    start: float,
    end: float,
    *,
    is_final: bool,
    speech_final: bool,
    from_finalize: bool,
) -> dict:
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": round(max(0.0, end - start), 3),
        "start": round(start, 3),
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "channel": {
            "alternatives": [{"transcript": text, "confidence": confidence(words), "words": words_json(words)}]
        },
        "metadata": {
            "request_id": request_id,
            "model_info": model_info(model_name),
            "model_uuid": model_uuid(model_name),
        },
    }


def utterance_end(last_word_end: float) -> dict:
    return {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": round(last_word_end, 3)}


def speech_started(at: float) -> dict:
    return {"type": "SpeechStarted", "channel": [0, 1], "timestamp": round(at, 3)}


def _created() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def metadata(request_id: str, model_name: str, duration: float, sha256: str) -> dict:
    """The live socket's closing message (and, without ``type``, the prerecorded response's)."""
    uid = model_uuid(model_name)
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256,
        "created": _created(),
        "duration": round(duration, 3),
        "channels": 1,
        "models": [uid],
        "model_info": {uid: model_info(model_name)},
    }


def error(description: str, variant: str = "INVALID_REQUEST") -> dict:
    return {"type": "Error", "variant": variant, "description": description, "message": description}


def prerecorded(request_id: str, model_name: str, t: Transcript, sha256: str) -> dict:
    """``POST /v1/listen``'s answer: a complete ``metadata`` block (the SDK validates it) and one
    channel with one alternative; never a top-level ``request_id`` (that means "accepted" to it)."""
    meta = metadata(request_id, model_name, t.duration, sha256)
    del meta["type"]
    alternative = {"transcript": t.text, "confidence": confidence(t.words), "words": words_json(t.words)}
    return {"metadata": meta, "results": {"channels": [{"alternatives": [alternative]}]}}


def http_error(status: int, message: str, request_id: str) -> tuple[int, dict]:
    """Deepgram's REST error body."""
    codes = {
        400: "Bad Request",
        401: "INVALID_AUTH",
        404: "Not Found",
        405: "Method Not Allowed",
        408: "Request Timeout",
        413: "Payload Too Large",
        429: "Too Many Requests",
        503: "Service Unavailable",
    }
    return status, {
        "err_code": codes.get(status, "INTERNAL_SERVER_ERROR"),
        "err_msg": message,
        "request_id": request_id,
    }
