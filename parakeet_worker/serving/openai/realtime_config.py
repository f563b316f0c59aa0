"""A Realtime transcription session's settings, from a client's ``session.update`` (or the older
``transcription_session.update``), checked level by level: any value of any type is either taken
or refused with a ``RealtimeError`` naming the field, never an exception of another kind."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from parakeet_worker.config.errors import ASRError
from parakeet_worker.engine.hotwords import HotwordError, Hotwords, parse_hotwords

DEFAULT_RATE = 24000
RATES = (8000, 16000, 24000, 44100, 48000)
DEFAULT_VAD = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


class RealtimeError(ASRError):
    """An error event's ``code``, ``message`` and ``param``."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(code, message)
        self.param = param


@dataclass(frozen=True)
class TranscriptionConfig:
    rate: int = DEFAULT_RATE
    turn_detection: dict | None = dataclasses.field(default_factory=lambda: dict(DEFAULT_VAD))
    language: str | None = None
    prompt: str = ""
    keywords: tuple[str, ...] = ()
    hotwords: Hotwords | None = None


def _object(value, param: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RealtimeError("invalid_type", f"{param} must be an object", param)
    return value


def _rate(fmt, current: int) -> int:
    if fmt is None:
        return current
    if isinstance(fmt, str):  # the older schema: "pcm16" (24 kHz)
        if fmt != "pcm16":
            raise RealtimeError("invalid_value", "only PCM16 audio is supported", "audio.input.format")
        return DEFAULT_RATE
    fmt = _object(fmt, "audio.input.format")
    if fmt.get("type", "audio/pcm") != "audio/pcm":
        raise RealtimeError("invalid_value", "only audio/pcm (PCM16 little-endian) is supported", "audio.input.format")
    rate = fmt.get("rate", DEFAULT_RATE)
    if isinstance(rate, bool) or rate not in RATES:
        raise RealtimeError("invalid_value", f"rate must be one of {RATES}", "audio.input.format.rate")
    return int(rate)


def _turn(turn):
    if turn is None:
        return None
    turn = _object(turn, "audio.input.turn_detection")
    if turn.get("type") not in ("server_vad", "semantic_vad"):
        raise RealtimeError(
            "invalid_value",
            "turn_detection must be server_vad, semantic_vad or null",
            "audio.input.turn_detection.type",
        )
    silence = turn.get("silence_duration_ms", DEFAULT_VAD["silence_duration_ms"])
    if isinstance(silence, bool) or not isinstance(silence, int) or not 80 <= silence <= 10_000:
        raise RealtimeError(
            "invalid_value",
            "silence_duration_ms must be a whole number from 80 to 10000",
            "audio.input.turn_detection.silence_duration_ms",
        )
    return {**DEFAULT_VAD, "type": "server_vad", "silence_duration_ms": silence}


def parse_session(session, kind: str, current: TranscriptionConfig) -> TranscriptionConfig:
    """``current`` with what ``session`` sets; ``kind``: the event's type."""
    session = _object(session, "session")
    if kind == "session.update":
        if session.get("type", "transcription") != "transcription":
            raise RealtimeError(
                "invalid_value",
                "this server runs transcription sessions only (session.type 'transcription', ?intent=transcription)",
                "session.type",
            )
        audio_in = _object(_object(session.get("audio"), "session.audio").get("input"), "session.audio.input")
        fmt, transcription = audio_in.get("format"), audio_in.get("transcription")
        turn_given, turn = "turn_detection" in audio_in, audio_in.get("turn_detection")
    else:  # transcription_session.update: the older, flat fields
        fmt, transcription = session.get("input_audio_format"), session.get("input_audio_transcription")
        turn_given, turn = "turn_detection" in session, session.get("turn_detection")
    transcription = _object(transcription, "audio.input.transcription")
    keywords, prompt = transcription.get("keywords", []), transcription.get("prompt", "")
    if keywords is None:
        keywords = []
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        raise RealtimeError("invalid_type", "keywords must be a list of strings", "audio.input.transcription.keywords")
    if not isinstance(prompt, str | None):
        raise RealtimeError("invalid_type", "prompt must be a string", "audio.input.transcription.prompt")
    prompt = prompt or ""
    language = transcription.get("language")
    terms = keywords + [t.strip() for t in prompt.split(",") if 0 < len(t.strip()) <= 50]
    try:
        hotwords = parse_hotwords(terms[:100], None) if terms else None
    except HotwordError as exc:
        raise RealtimeError("invalid_value", str(exc), "audio.input.transcription.keywords") from None
    return TranscriptionConfig(
        rate=_rate(fmt, current.rate),
        turn_detection=_turn(turn) if turn_given else current.turn_detection,
        language=language if isinstance(language, str) else None,
        prompt=prompt,
        keywords=tuple(keywords),
        hotwords=hotwords,
    )
