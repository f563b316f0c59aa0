"""``POST /v1/audio/transcriptions``: OpenAI's transcription API on the worker's own engine.

    client = openai.OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="TOKEN or anything")
    client.audio.transcriptions.create(model="parakeet", file=open("speech.mp3", "rb"))

One request flows one way: multipart form -> ``TranscriptionRequest`` (validated, OpenAI's rules)
-> the upload spooled to a temp file (size limit enforced while reading) -> ``audio_utils`` decoding
-> ``Engine.transcribe`` (the dynamic batcher, shared with RunPod jobs and streams) -> the asked
``response_format``. Every failure is OpenAI's error object ``{"error": {"message", "type",
"param", "code"}}`` with a fitting HTTP status, so the official clients raise their usual
exceptions (``BadRequestError``, ``AuthenticationError``, ...).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from parakeet_worker.audio.budget import DecodeBudget
from parakeet_worker.audio.decode import decode_audio_async
from parakeet_worker.config.errors import (
    AUDIO_TOO_LARGE,
    AUDIO_TOO_LONG,
    INTERNAL_ERROR,
    INVALID_AUDIO,
    INVALID_INPUT,
    OUT_OF_MEMORY,
    UNSUPPORTED_FORMAT,
    ASRError,
)
from parakeet_worker.engine.hotwords import HotwordError, Hotwords, parse_hotwords
from parakeet_worker.engine.transcript import Transcript
from parakeet_worker.runtime import hardware, metrics
from parakeet_worker.runtime.scheduling import BLOCKING_POOL, run_in
from parakeet_worker.serving.auth import authorized
from parakeet_worker.serving.formatting import to_srt, to_vtt
from parakeet_worker.serving.openai_upload import APIError, ClientGone, UploadBudget, read_form

log = logging.getLogger("openai_api")
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
    "hotword_boost",
}  # ours (hotwords.py): a field per word or phrase

# our error codes -> HTTP status; OpenAI's clients map 400 to BadRequestError, 413 to APIStatusError
STATUS = {INVALID_INPUT: 400, INVALID_AUDIO: 400, UNSUPPORTED_FORMAT: 400, AUDIO_TOO_LONG: 400, AUDIO_TOO_LARGE: 413}


@dataclass
class RouteState:
    """What the OpenAI routes share: the server (engine, readiness, drain accounting), the
    upload budget (spool disk, concurrent uploads) and the decode memory budget."""

    server: object  # the ASRServer (asr_server.py)
    uploads: UploadBudget
    decode_budget: DecodeBudget


STATE_KEY = web.AppKey("openai_routes", RouteState)


def add_routes(app: web.Application, server) -> None:
    """The OpenAI-compatible routes on ``server``'s app."""
    s = server.settings
    app[STATE_KEY] = RouteState(
        server, UploadBudget(s.max_uploads, s.spool_budget), DecodeBudget(s.decode_budget_bytes)
    )
    app.router.add_post(ROUTE, transcriptions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", models)


@dataclass(frozen=True)
class TranscriptionRequest:
    model: str
    response_format: str
    granularities: tuple[str, ...]  # verbose_json only: which of words / segments to include
    language: str | None  # ISO 639-1, checked against LANGUAGES; reported, not used for decoding
    # ``prompt`` and ``temperature`` are accepted and ignored: decoding is greedy and takes no prompt
    # (free text would make poor hotwords: every "the" and "and" boosted); ``hotwords[]`` is explicit
    hotwords: Hotwords | None = None


def parse_fields(fields: dict[str, list[str]]) -> TranscriptionRequest:
    """The form's text fields checked as OpenAI checks them."""
    unknown = sorted(set(fields) - FIELDS)
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
    if (one("stream") or "false").lower() not in ("false", "0"):
        raise APIError(
            400, "streaming responses are not supported here; use the WebSocket for live results", param="stream"
        )
    one("prompt")
    return TranscriptionRequest(
        model=one("model") or "",
        response_format=fmt,
        granularities=tuple(dict.fromkeys(granularities or ["segment"])),
        language=language,
        hotwords=_hotwords(fields.get("hotwords[]", []) + fields.get("hotwords", []), one("hotword_boost")),
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


# ---------------------------------------------------------------------------------------------
# output
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


async def models(request: web.Request) -> web.Response:
    """``GET /v1/models`` (and ``/v1/models/{model}``): the one served model, in OpenAI's shape, so
    clients and tools that list models first find it."""
    server = request.app[STATE_KEY].server
    if not authorized(request, server.settings.http_api_token):
        return APIError(401, "Incorrect API key provided", code="invalid_api_key").response()
    model = {"id": server.settings.model_id, "object": "model", "created": 0, "owned_by": "nvidia"}
    asked = request.match_info.get("model")
    if asked is None:
        return web.json_response({"object": "list", "data": [model]})
    if asked != model["id"]:
        return APIError(
            404,
            f"The model '{asked}' does not exist; this worker serves '{model['id']}'",
            param="model",
            code="model_not_found",
        ).response()
    return web.json_response(model)


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


# ---------------------------------------------------------------------------------------------
async def transcriptions(request: web.Request) -> web.Response:
    # one structured log line and the asr_requests{kind="openai"} counters per request (metrics.py)
    with metrics.JobRecord(request.headers.get("X-Request-Id", "")[:64], kind="openai") as record:
        try:
            return await _transcriptions(request, record)
        except APIError as exc:
            record.fail(exc.code or f"http_{exc.status}")
            return exc.response()


async def _transcriptions(request: web.Request, record: metrics.JobRecord) -> web.Response:
    state = request.app[STATE_KEY]
    server, settings = state.server, state.server.settings
    try:
        if not authorized(request, settings.http_api_token):
            raise APIError(
                401,
                "Incorrect API key provided: pass the server's API_TOKEN as 'Authorization: Bearer <token>'",
                code="invalid_api_key",
            )
        if server.draining:
            metrics.REFUSALS.labels("draining").inc()
            raise APIError(
                503, "The server is shutting down; retry on another worker", kind="server_error", code="shutting_down"
            )
        if server.unhealthy:
            metrics.REFUSALS.labels("unhealthy").inc()
            raise APIError(
                503,
                "This worker cannot transcribe any more and is being replaced; retry",
                kind="server_error",
                code=INTERNAL_ERROR,
            )
        if not server.ready:
            metrics.REFUSALS.labels("loading").inc()
            raise APIError(503, "The model is still loading; retry shortly", kind="server_error", code="model_loading")
        with (
            state.uploads.upload() as upload,
            server.requests.track(),
            tempfile.TemporaryDirectory(prefix="openai-upload-") as tmp,
        ):
            spool = Path(tmp) / "audio"
            fields = await read_form(
                request,
                settings.max_audio_bytes,
                spool,
                upload,
                settings.upload_stall_s,
                settings.upload_timeout_s,
                settings.upload_min_rate,
            )
            return await _transcribe_upload(state, fields, spool, record)
    except ClientGone:
        record.fail("cancelled")
        log.info("the client went away during its upload")
        return web.Response(status=499)  # nobody reads it
    except APIError:
        raise
    except ASRError as exc:
        raise APIError(
            STATUS.get(exc.code, 500),
            exc.message,
            param="file" if exc.code in STATUS else None,
            code=exc.code,
            kind="invalid_request_error" if exc.code in STATUS else "server_error",
        ) from None
    except MemoryError:  # the host's; GPU memory is the engine's to recover (out_of_memory above)
        raise APIError(
            500, "out of memory while processing this request", kind="server_error", code=OUT_OF_MEMORY
        ) from None
    except Exception as exc:  # noqa: BLE001 - a bug must fail one request, not the worker
        if hardware.is_device_lost(exc):  # logged once, by lifecycle.poison; never CUDA text to clients
            raise APIError(
                503,
                "This worker's GPU failed while transcribing; retry (another worker will serve it)",
                kind="server_error",
                code=INTERNAL_ERROR,
            ) from None
        log.exception("transcription request failed")
        raise APIError(
            500, "the request failed unexpectedly; it has been logged", kind="server_error", code=INTERNAL_ERROR
        ) from None


async def _transcribe_upload(state: RouteState, fields: dict, spool: Path, record: metrics.JobRecord) -> web.Response:
    """The form is read: decode the spooled audio and transcribe it."""
    server = state.server
    settings = server.settings
    req = parse_fields(fields)
    engine = server.engine
    with engine.request_arriving():  # requests that arrive together share a forward pass
        # the decode path and worker-wide decode memory budget RunPod jobs use: cancellable (a
        # client gone kills its ffmpeg)
        audio = await decode_audio_async(spool, settings.max_audio_seconds, None, state.decode_budget)
    record.audio_s = audio.duration
    transcript = await engine.transcribe(audio.samples, hotwords=req.hotwords)
    body, content_type = await run_in(BLOCKING_POOL, render, transcript, req, engine.model_name)
    return web.Response(
        body=body, content_type=content_type, charset="utf-8", headers={"openai-model": engine.model_name}
    )
