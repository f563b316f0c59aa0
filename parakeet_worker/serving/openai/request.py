"""A transcription request in OpenAI's form fields, checked by OpenAI's rules (plus our hotword
fields), as ``TranscriptionRequest``; a bad field is an ``APIError`` naming it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from parakeet_worker.config.errors import INVALID_INPUT
from parakeet_worker.engine.hotwords import HotwordError, Hotwords, parse_hotwords
from parakeet_worker.serving.upload import APIError

ROUTE = "/v1/audio/transcriptions"
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
# parakeet-tdt-0.6b-v3's languages (ISO 639-1 -> the name OpenAI reports); it detects the language
# itself, so ``language`` is checked but does not steer decoding
LANGUAGES = {
    "bg": "bulgarian",
    "cs": "czech",
    "da": "danish",
    "de": "german",
    "el": "greek",
    "en": "english",
    "es": "spanish",
    "et": "estonian",
    "fi": "finnish",
    "fr": "french",
    "hr": "croatian",
    "hu": "hungarian",
    "it": "italian",
    "lt": "lithuanian",
    "lv": "latvian",
    "mt": "maltese",
    "nl": "dutch",
    "pl": "polish",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sk": "slovak",
    "sl": "slovenian",
    "sv": "swedish",
    "uk": "ukrainian",
}
FIELDS = {
    "file",
    "model",
    "response_format",
    "timestamp_granularities[]",
    "timestamp_granularities",
    "language",
    "prompt",
    "temperature",
    "stream",
    "hotwords[]",
    "hotwords",
    "hotword_boost",  # ours (hotwords.py): a field per word or phrase
    "keywords[]",  # OpenAI's newer name for the same idea: boosted like hotwords
    "include[]",  # e.g. logprobs: accepted, not produced
}


@dataclass(frozen=True)
class TranscriptionRequest:
    model: str
    response_format: str
    granularities: tuple[str, ...]  # verbose_json only: which of words / segments to include
    language: str | None  # ISO 639-1, checked against LANGUAGES; reported, not used for decoding
    # ``prompt`` and ``temperature`` are accepted and ignored: decoding is greedy and takes no prompt
    # (free text would make poor hotwords: every "the" and "and" boosted); ``hotwords[]`` is explicit
    hotwords: Hotwords | None = None
    stream: bool = False  # server-sent events: deltas as the streaming decoder hears the file


def parse_fields(fields: dict[str, list[str]]) -> TranscriptionRequest:
    """The form's text fields checked as OpenAI checks them."""
    unknown = sorted(f for f in set(fields) - FIELDS if not f.startswith("chunking_strategy"))
    if unknown:
        raise APIError(400, f"Unrecognized request argument supplied: {', '.join(unknown)}", param=unknown[0])

    def one(name: str, default: str | None = None) -> str | None:
        values = fields.get(name)
        if not values:
            return default
        if len(values) > 1:
            raise APIError(400, f"'{name}' was given more than once", param=name)
        return values[0].strip()

    fmt = (one("response_format") or "json").lower()
    if fmt not in RESPONSE_FORMATS:
        raise APIError(
            400, f"'{fmt}' is not one of {list(RESPONSE_FORMATS)} - 'response_format'", param="response_format"
        )
    granularities = [
        g.strip().lower()
        for g in fields.get("timestamp_granularities[]", []) + fields.get("timestamp_granularities", [])
    ]
    bad = [g for g in granularities if g not in GRANULARITIES]
    if bad:
        raise APIError(
            400,
            f"'{bad[0]}' is not one of {list(GRANULARITIES)} - 'timestamp_granularities[]'",
            param="timestamp_granularities[]",
        )
    if granularities and fmt != "verbose_json":
        raise APIError(
            400,
            "timestamp_granularities[] is only supported with response_format 'verbose_json'",
            param="timestamp_granularities[]",
        )
    language = (one("language") or "").lower() or None
    if language is not None and language not in LANGUAGES:
        raise APIError(
            400,
            f"Unsupported language '{language}': the model speaks "
            + ", ".join(sorted(LANGUAGES))
            + " (ISO 639-1), and detects which by itself",
            param="language",
        )
    temperature = one("temperature")
    if temperature:
        try:
            t = float(temperature)
        except ValueError:
            t = math.nan
        if not 0.0 <= t <= 1.0:
            raise APIError(400, "temperature must be a number from 0 to 1", param="temperature")
    stream = (one("stream") or "false").lower()
    if stream not in ("true", "false", "1", "0"):
        raise APIError(400, "stream must be true or false", param="stream")
    stream = stream in ("true", "1")
    if stream and fmt not in ("json", "text"):
        raise APIError(
            400,
            f"stream=true answers with text events: use response_format json or text, not {fmt}",
            param="response_format",
        )
    one("prompt")
    return TranscriptionRequest(
        model=one("model") or "",
        response_format=fmt,
        granularities=tuple(dict.fromkeys(granularities or ["segment"])),
        language=language,
        hotwords=_hotwords(
            fields.get("hotwords[]", []) + fields.get("hotwords", []) + fields.get("keywords[]", []),
            one("hotword_boost"),
        ),
        stream=stream,
    )


def _hotwords(phrases: list[str], boost: str | None) -> Hotwords | None:
    """``hotwords[]`` (repeated, as OpenAI's list fields are) and ``hotword_boost``, with the batch
    API's limits and errors (hotwords.py)."""
    try:
        number = float(boost) if boost else None
    except ValueError:
        raise APIError(400, "hotword_boost must be a number", param="hotword_boost", code=INVALID_INPUT) from None
    try:
        return parse_hotwords(phrases or None, number)
    except HotwordError as exc:
        raise APIError(
            400, str(exc), param="hotword_boost" if "hotword_boost" in str(exc) else "hotwords[]", code=INVALID_INPUT
        ) from None
