"""``POST /v1/audio/transcriptions``: OpenAI's transcription API on the worker's own engine.

    client = openai.OpenAI(base_url="http://127.0.0.1:8765/v1", api_key="TOKEN or anything")
    client.audio.transcriptions.create(model="parakeet", file=open("speech.mp3", "rb"))

One request flows one way: multipart form -> ``TranscriptionRequest`` (validated, OpenAI's rules)
-> the upload spooled to a temp file (size limit enforced while reading) -> decoding (audio/decode.py)
-> ``Engine.transcribe`` (the dynamic batcher, shared with RunPod jobs and streams) -> the asked
``response_format``. Every failure is OpenAI's error object ``{"error": {"message", "type",
"param", "code"}}`` with a fitting HTTP status, so the official clients raise their usual
exceptions (``BadRequestError``, ``AuthenticationError``, ...).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from aiohttp import web

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
from parakeet_worker.runtime import hardware, metrics
from parakeet_worker.runtime.scheduling import BLOCKING_POOL, run_in
from parakeet_worker.serving.auth import authorized
from parakeet_worker.serving.openai.formats import render
from parakeet_worker.serving.openai.request import ROUTE, parse_fields
from parakeet_worker.serving.openai.streaming import stream_transcription
from parakeet_worker.serving.upload import API_KEY, APIError, ClientGone, HttpApi, read_form

log = logging.getLogger("openai_api")
UNAVAILABLE = {  # ASRServer.not_serving() -> OpenAI's 503 message and code
    "draining": ("The server is shutting down; retry on another worker", "shutting_down"),
    "unhealthy": ("This worker cannot transcribe any more and is being replaced; retry", INTERNAL_ERROR),
    "loading": ("The model is still loading; retry shortly", "model_loading"),
}
# our error codes -> HTTP status; OpenAI's clients map 400 to BadRequestError, 413 to APIStatusError
STATUS = {INVALID_INPUT: 400, INVALID_AUDIO: 400, UNSUPPORTED_FORMAT: 400, AUDIO_TOO_LONG: 400, AUDIO_TOO_LARGE: 413}


def add_routes(app: web.Application) -> None:
    """The OpenAI-compatible routes (the app has its ``HttpApi`` state: ``upload.install``)."""
    app.router.add_post(ROUTE, transcriptions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", models)


async def models(request: web.Request) -> web.Response:
    """``GET /v1/models`` (and ``/v1/models/{model}``): the one served model, in OpenAI's shape, so
    clients and tools that list models first find it."""
    server = request.app[API_KEY].server
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
    state = request.app[API_KEY]
    server, settings = state.server, state.server.settings
    try:
        if not authorized(request, settings.http_api_token):
            raise APIError(
                401,
                "Incorrect API key provided: pass the server's API_TOKEN as 'Authorization: Bearer <token>'",
                code="invalid_api_key",
            )
        why = server.not_serving()
        if why:
            metrics.REFUSALS.labels(why).inc()
            message, code = UNAVAILABLE[why]
            raise APIError(503, message, kind="server_error", code=code)
        with (
            state.uploads.upload() as upload,
            server.requests.track(),
            tempfile.TemporaryDirectory(prefix="openai-upload-") as tmp,
        ):
            spool = Path(tmp) / "audio"
            fields = await read_form(request, spool, upload, state.limits)
            return await _transcribe_upload(state, request, fields, spool, record)
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


async def _transcribe_upload(
    state: HttpApi, request: web.Request, fields: dict, spool: Path, record: metrics.JobRecord
) -> web.StreamResponse:
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
    if req.stream:
        return await stream_transcription(request, server, audio.samples, req)
    transcript = await engine.transcribe(audio.samples, hotwords=req.hotwords)
    body, content_type = await run_in(BLOCKING_POOL, render, transcript, req, engine.model_name)
    return web.Response(
        body=body, content_type=content_type, charset="utf-8", headers={"openai-model": engine.model_name}
    )


def _realtime_refusal(status: int, message: str) -> web.Response:
    code = {401: "invalid_api_key", 503: "unavailable", 404: "not_found", 400: "invalid_request"}.get(status)
    return APIError(
        status, message, code=code, kind="invalid_request_error" if status < 500 else "server_error"
    ).response()


async def realtime(request: web.Request) -> web.StreamResponse:
    """``/v1/realtime``: transcription sessions (``?intent=transcription``; a conversation session
    is refused before the upgrade)."""
    from parakeet_worker.serving.connection import accept
    from parakeet_worker.serving.openai.realtime import RealtimeTranscription

    intent = request.query.get("intent", "transcription")
    if intent != "transcription":
        return _realtime_refusal(
            400, "this server runs transcription sessions only: connect with ?intent=transcription"
        )
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    return await accept(
        request, RealtimeTranscription, _realtime_refusal, ("realtime",) if "realtime" in offered else ()
    )


def add_realtime_route(app: web.Application) -> None:
    app.router.add_get("/v1/realtime", realtime)
