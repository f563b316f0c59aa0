"""Deepgram's prerecorded route, ``POST /v1/listen``: the audio as the body (any container, sniffed
from its bytes), or ``{"url": ...}`` fetched under the same URL policy as a job's ``audio_url``;
the answer in Deepgram's ``results.channels[0].alternatives[0]`` shape, with words and times.
Errors come as Deepgram's ``{"err_code", "err_msg", "request_id"}`` with the fitting status.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import uuid
from pathlib import Path

from aiohttp import web

from parakeet_worker.audio import fetch
from parakeet_worker.audio.decode import decode_audio_async
from parakeet_worker.config.errors import (
    AUDIO_TOO_LARGE,
    AUDIO_TOO_LONG,
    DOWNLOAD_FAILED,
    FORBIDDEN_URL,
    INVALID_AUDIO,
    INVALID_INPUT,
    UNSUPPORTED_FORMAT,
    ASRError,
)
from parakeet_worker.runtime import hardware, metrics
from parakeet_worker.runtime.scheduling import BLOCKING_POOL, run_in
from parakeet_worker.serving.auth import authorized
from parakeet_worker.serving.deepgram import messages
from parakeet_worker.serving.deepgram.messages import ListenError, parse_options
from parakeet_worker.serving.upload import API_KEY, APIError, ClientGone, HttpApi, read_body

log = logging.getLogger("deepgram")
STATUS = {
    INVALID_INPUT: 400,
    INVALID_AUDIO: 400,
    UNSUPPORTED_FORMAT: 400,
    AUDIO_TOO_LONG: 400,
    FORBIDDEN_URL: 400,
    DOWNLOAD_FAILED: 400,
    AUDIO_TOO_LARGE: 413,
}
MAX_JSON_BYTES = 64 * 1024  # a {"url": ...} body


class DeepgramHTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


async def listen(request: web.Request) -> web.Response:
    request_id = str(uuid.uuid4())
    with metrics.JobRecord(request_id, kind="deepgram") as record:
        try:
            return await _listen(request, request_id, record)
        except DeepgramHTTPError as exc:
            record.fail(f"http_{exc.status}")
            status, body = messages.http_error(exc.status, exc.message, request_id)
            return web.json_response(body, status=status)


async def _listen(request: web.Request, request_id: str, record: metrics.JobRecord) -> web.Response:
    state: HttpApi = request.app[API_KEY]
    server, s = state.server, state.server.settings
    if not authorized(request, s.http_api_token):
        raise DeepgramHTTPError(401, "Invalid credentials: pass the server's API_TOKEN as 'Authorization: Token <key>'")
    why = server.not_serving()
    if why:
        metrics.REFUSALS.labels(why).inc()
        raise DeepgramHTTPError(503, "The worker cannot transcribe now (loading, shutting down or failed); retry")
    try:
        options = parse_options(request.query, s.stream_eou_ms)
    except ListenError as exc:
        raise DeepgramHTTPError(400, str(exc)) from None
    try:
        with (
            state.uploads.upload() as upload,
            server.requests.track(),
            tempfile.TemporaryDirectory(prefix="listen-") as tmp,
        ):
            spool = Path(tmp) / "audio"
            if request.content_type == "application/json":
                path = await _fetch_url(request, s)
            else:
                await read_body(request, spool, upload, state.limits)
                path = spool
            try:
                engine = server.engine
                with engine.request_arriving():
                    audio = await decode_audio_async(path, s.max_audio_seconds, None, state.decode_budget)
                record.audio_s = audio.duration
                transcript = await engine.transcribe(audio.samples, hotwords=options.hotwords)
                digest = await run_in(BLOCKING_POOL, _sha256, path)
            finally:
                if path != spool:
                    path.unlink(missing_ok=True)
        answer = messages.prerecorded(request_id, engine.model_name, transcript, digest)
        body = await run_in(BLOCKING_POOL, json.dumps, answer)
        return web.Response(text=body, content_type="application/json", headers={"dg-request-id": request_id})
    except DeepgramHTTPError:
        raise
    except ClientGone:
        record.fail("cancelled")
        return web.Response(status=499)
    except APIError as exc:
        raise DeepgramHTTPError(exc.status, exc.message) from None
    except ASRError as exc:
        raise DeepgramHTTPError(STATUS.get(exc.code, 500), exc.message) from None
    except Exception as exc:  # noqa: BLE001 - a bug must fail one request, not the worker
        if hardware.is_device_lost(exc):
            raise DeepgramHTTPError(503, "This worker's GPU failed; retry (another worker will serve it)") from None
        log.exception("prerecorded request failed")
        raise DeepgramHTTPError(500, "the request failed unexpectedly; it has been logged") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def _fetch_url(request: web.Request, s) -> Path:
    """``{"url": ...}``: the audio downloaded under the worker's URL policy (public addresses
    only, limits on size, time and redirects)."""
    raw = await request.content.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise DeepgramHTTPError(400, 'the JSON body is too large: send {"url": "https://..."}')
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise DeepgramHTTPError(400, 'the body is not JSON: send {"url": "https://..."} or the audio') from None
    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url:
        raise DeepgramHTTPError(400, 'the JSON body needs a "url" string')
    return await fetch.download(url, fetch.DownloadPolicy.from_settings(s))
