"""A batch job's input: the schema, the value rules and the checked ``Request`` (docs/PROTOCOL.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from runpod.serverless.utils.rp_validator import validate

from parakeet_worker.config.errors import INVALID_INPUT, ASRError
from parakeet_worker.engine.hotwords import HotwordError, Hotwords, parse_hotwords

OUTPUT_FORMATS = ("json", "text", "srt", "vtt")
ACTIONS = ("transcribe", "websocket")

INPUT_SCHEMA = {
    "audio_base64": {"type": str, "required": False, "default": None},
    "audio_url": {"type": str, "required": False, "default": None},
    "format": {"type": str, "required": False, "default": None},
    "timestamps": {"type": bool, "required": False, "default": True},
    "use_local_attention": {"type": bool, "required": False, "default": False},
    "chunk_long_audio": {"type": bool, "required": False, "default": False},
    "chunk_duration": {"type": float, "required": False, "default": 30.0},
    "output_format": {"type": str, "required": False, "default": "json"},
    "action": {"type": str, "required": False, "default": "transcribe"},
    # boosted words or short phrases (hotwords.py has the limits); the boost goes into ``hotwords``
    "hotwords": {"type": list, "required": False, "default": None},
    "hotword_boost": {"type": float, "required": False, "default": None},
    # action "websocket" only:
    "idle_timeout": {"type": float, "required": False, "default": 60.0},
    "max_lifetime": {"type": float, "required": False, "default": 3600.0},
}
WEBSOCKET_ONLY = ("idle_timeout", "max_lifetime")
TRANSCRIBE_ONLY = ("hotwords", "hotword_boost")  # a websocket job's streams send theirs in "start"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Value rules, checked here rather than as rp_validator "constraints": the validator skips a
# field's constraints when its value has the default's type (chunk_duration=-5 would pass).
RULES = {
    "chunk_duration": (lambda v: _number(v) and 5.0 <= v <= 3600.0, "a number of seconds from 5 to 3600"),
    "output_format": (
        lambda v: isinstance(v, str) and v.lower() in OUTPUT_FORMATS,
        "one of " + ", ".join(OUTPUT_FORMATS),
    ),
    "action": (lambda v: isinstance(v, str) and v.lower() in ACTIONS, "one of " + ", ".join(ACTIONS)),
    "idle_timeout": (lambda v: _number(v) and 1.0 <= v <= 3600.0, "a number of seconds from 1 to 3600"),
    "max_lifetime": (lambda v: _number(v) and 10.0 <= v <= 86400.0, "a number of seconds from 10 to 86400"),
}


@dataclass(frozen=True)
class Request:
    audio_base64: str | None
    audio_url: str | None
    format: str | None
    timestamps: bool
    use_local_attention: bool
    chunk_long_audio: bool
    chunk_duration: float
    output_format: str
    action: str
    hotwords: Hotwords | None  # with hotword_boost folded in; None: nothing to boost
    idle_timeout: float
    max_lifetime: float


def parse_request(job_input) -> Request:
    """The job's input checked against INPUT_SCHEMA (unknown fields are refused) and RULES."""
    if not isinstance(job_input, dict):
        raise ASRError(INVALID_INPUT, "input must be a JSON object")
    result = validate(job_input, {k: dict(v) for k, v in INPUT_SCHEMA.items()})
    errors = [e.replace("<class '", "").replace("'>", "") for e in result.get("errors", [])]
    errors += [
        f"{key} must be {hint}" for key, (ok, hint) in RULES.items() if key in job_input and not ok(job_input[key])
    ]
    if errors:
        raise ASRError(INVALID_INPUT, "; ".join(errors))
    values = dict(result["validated_input"])
    try:
        values["hotwords"] = parse_hotwords(values["hotwords"], values.pop("hotword_boost"))
    except HotwordError as exc:
        raise ASRError(INVALID_INPUT, str(exc)) from None
    req = Request(**values)
    req = replace(req, output_format=req.output_format.lower(), action=req.action.lower())
    if req.action == "transcribe":
        if (req.audio_base64 is None) == (req.audio_url is None):
            raise ASRError(INVALID_INPUT, "give exactly one of audio_base64 or audio_url")
        if req.output_format in ("srt", "vtt") and not req.timestamps:
            raise ASRError(INVALID_INPUT, f"output_format {req.output_format} needs timestamps=true")
        misplaced = [k for k in WEBSOCKET_ONLY if k in job_input]
        if misplaced:
            raise ASRError(INVALID_INPUT, f"{', '.join(misplaced)} only apply to action 'websocket'")
    elif req.audio_base64 is not None or req.audio_url is not None:
        raise ASRError(INVALID_INPUT, "action 'websocket' takes no audio: stream it to the ws_url it returns")
    elif any(k in job_input for k in TRANSCRIBE_ONLY):
        raise ASRError(INVALID_INPUT, "a websocket job's streams send hotwords in their start message")
    return req
