"""RunPod serverless entry: validate the job, fetch and decode its audio, transcribe, format.

    python -u rp_handler.py                      # on RunPod
    python rp_handler.py --rp_serve_api          # the SDK's local HTTP server (/run, /runsync, /status)

``{"action": "websocket"}`` starts the real-time WebSocket server in this worker (on the same
engine) and keeps the job alive while clients stream; ``WORKER_MODE=load_balancer`` runs only that
server, for RunPod load-balancing endpoints.

Every failure becomes ``{"error": "<code>: <message>"}`` (the job is marked FAILED); the worker
itself never dies on a bad job. Several jobs run at once (``concurrency_modifier``) so that the
engine's dynamic batcher can put them in one forward pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import runpod
from runpod.serverless.utils.rp_validator import validate

import audio_utils
from asr_engine import Engine
from errors import INTERNAL_ERROR, INVALID_INPUT, ASRError
from formatting import job_output
from settings import Settings
from websocket_handler import ASRServer, run_server

log = logging.getLogger("rp_handler")

OUTPUT_FORMATS = ("json", "text", "srt", "vtt")
ACTIONS = ("transcribe", "websocket")
PROGRESS_INTERVAL_S = 2.0  # long jobs: at most one progress update this often


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
    # action "websocket" only:
    "idle_timeout": {"type": float, "required": False, "default": 60.0},
    "max_lifetime": {"type": float, "required": False, "default": 3600.0},
}
WEBSOCKET_ONLY = ("idle_timeout", "max_lifetime")

# Value rules, checked here rather than as rp_validator "constraints": the validator skips a
# field's constraints when its value has the default's type (chunk_duration=-5 would pass).
RULES = {
    "chunk_duration": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 5.0 <= v <= 3600.0,
                       "a number of seconds from 5 to 3600"),
    "output_format": (lambda v: isinstance(v, str) and v.lower() in OUTPUT_FORMATS, "one of " + ", ".join(OUTPUT_FORMATS)),
    "action": (lambda v: isinstance(v, str) and v.lower() in ACTIONS, "one of " + ", ".join(ACTIONS)),
    "idle_timeout": (lambda v: _number(v) and 1.0 <= v <= 3600.0, "a number of seconds from 1 to 3600"),
    "max_lifetime": (lambda v: _number(v) and 10.0 <= v <= 86400.0, "a number of seconds from 10 to 86400"),
}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
    idle_timeout: float
    max_lifetime: float


def parse_request(job_input) -> Request:
    """The job's input checked against INPUT_SCHEMA (unknown fields are refused) and SPEC's rules."""
    if not isinstance(job_input, dict):
        raise ASRError(INVALID_INPUT, "input must be a JSON object")
    result = validate(job_input, {k: dict(v) for k, v in INPUT_SCHEMA.items()})
    errors = [e.replace("<class '", "").replace("'>", "") for e in result.get("errors", [])]
    errors += [f"{key} must be {hint}" for key, (ok, hint) in RULES.items() if key in job_input and not ok(job_input[key])]
    if errors:
        raise ASRError(INVALID_INPUT, "; ".join(errors))
    req = Request(**result["validated_input"])
    req = Request(**{**req.__dict__, "output_format": req.output_format.lower(), "action": req.action.lower()})
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
    return req


# ---------------------------------------------------------------------------------------------
SETTINGS = Settings.from_env()
_engine: Engine | None = None


def get_engine() -> Engine:
    """The one shared engine, loaded and warmed on first use (at start-up in ``main``)."""
    global _engine
    if _engine is None:
        _engine = Engine(SETTINGS)
    return _engine


async def fetch_audio(req: Request, engine: Engine) -> audio_utils.DecodedAudio:
    s = SETTINGS
    if req.audio_base64 is not None:
        with engine.expecting():  # jobs that arrive together are batched together
            data = audio_utils.decode_base64(req.audio_base64, s.max_audio_bytes)
            return await asyncio.to_thread(audio_utils.decode_audio, data, s.max_audio_seconds, req.format)
    policy = audio_utils.DownloadPolicy(s.max_audio_bytes, s.download_timeout_s, s.max_redirects,
                                        s.allow_private_urls, s.allowed_url_hosts)
    path = await audio_utils.download(req.audio_url, policy)
    try:
        with engine.expecting():
            return await asyncio.to_thread(audio_utils.decode_audio, Path(path), s.max_audio_seconds, req.format)
    finally:
        path.unlink(missing_ok=True)


def _progress(job: dict, message: dict) -> None:
    # Only on RunPod: locally the SDK would try to post the update to an unset URL.
    if os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        try:
            runpod.serverless.progress_update(job, message)
        except Exception:  # noqa: BLE001 - progress is best effort, never fails the job
            log.debug("progress update failed", exc_info=True)


class ProgressReporter:
    """Progress of a long job as ``{"stage", "duration", "progress"}`` (0..1), at most one update
    per PROGRESS_INTERVAL_S: each update is an HTTP post from its own thread in the SDK."""

    def __init__(self, job: dict, duration: float, send=None):
        self.job, self.duration = job, round(duration, 1)
        self.send = send or _progress
        self.last = -math.inf
        self.sent = 0

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S and fraction < 1.0:
            return
        self.last = now
        self.sent += 1
        self.send(self.job, {"stage": "transcribing", "duration": self.duration,
                             "progress": round(min(max(fraction, 0.0), 1.0), 3)})


async def handler(job: dict) -> dict:
    t0 = time.perf_counter()
    try:
        req = parse_request(job.get("input"))
        if req.action == "websocket":
            return await websocket_job(job, req)
        engine = get_engine()
        audio = await fetch_audio(req, engine)
        progress = None
        if audio.duration > 60:
            progress = ProgressReporter(job, audio.duration)
            progress(0.0)
        transcript = await engine.transcribe(audio.samples, use_local_attention=req.use_local_attention,
                                             chunk_long_audio=req.chunk_long_audio,
                                             chunk_duration=req.chunk_duration, on_progress=progress)
        return job_output(transcript, timestamps=req.timestamps, output_format=req.output_format,
                          model=engine.model_name, processing_time=time.perf_counter() - t0)
    except ASRError as exc:
        return {"error": str(exc)}
    except MemoryError:
        return {"error": f"{INTERNAL_ERROR}: out of memory while processing this job"}
    except Exception:  # noqa: BLE001 - a bug must fail one job, not the worker
        log.exception("job failed")
        return {"error": f"{INTERNAL_ERROR}: the job failed unexpectedly; it has been logged"}


# ---------------------------------------------------------------------------------------------
# real-time mode inside a RunPod job: {"action": "websocket"}
_ws_server: ASRServer | None = None
_ws_lock = asyncio.Lock()  # two websocket jobs arriving together start one server


async def ensure_ws_server() -> ASRServer:
    """Start the WebSocket server in this worker process once, on the shared engine. Reached
    over the pod's public IP, so it always requires a token: WS_AUTH_TOKEN, or a random one."""
    global _ws_server
    async with _ws_lock:
        if _ws_server is None:
            token = SETTINGS.ws_auth_token or secrets.token_urlsafe(24)
            server = ASRServer(dataclasses.replace(SETTINGS, ws_auth_token=token), get_engine())
            try:
                await server.serve(SETTINGS.ws_host, SETTINGS.ws_port)
            except Exception:
                await server.close()
                raise
            _ws_server = server
    return _ws_server


def public_ws_url() -> str:
    """Where clients connect: RunPod maps the container's TCP port to a public one."""
    host = os.environ.get("RUNPOD_PUBLIC_IP") or "127.0.0.1"
    port = os.environ.get(f"RUNPOD_TCP_PORT_{SETTINGS.ws_port}") or str(SETTINGS.ws_port)
    return f"ws://{host}:{port}"


async def _announce(job: dict, message: dict) -> None:
    """Make the ready message readable while the job runs: as progress (``/status``) and on the
    job's stream channel (``/stream/{id}``). Only on RunPod; locally the SDK has no such URLs."""
    _progress(job, message)
    if os.environ.get("RUNPOD_WEBHOOK_POST_STREAM"):
        from runpod.http_client import AsyncClientSession
        from runpod.serverless.modules.rp_http import stream_result

        try:
            async with AsyncClientSession() as session:
                await stream_result(session, {"output": message}, job)
        except Exception:  # noqa: BLE001 - /status still carries it
            log.warning("could not post the ready message to the stream channel", exc_info=True)


async def serve_websocket(job: dict, req: Request):
    """Yield the ready message, serve WebSocket clients until no session has been active for
    ``idle_timeout`` seconds or ``max_lifetime`` is reached, then yield a summary."""
    server = await ensure_ws_server()
    ready = {"status": "ready", "ws_url": public_ws_url(), "token": server.settings.ws_auth_token}
    log.info("websocket job %s: serving at %s", job.get("id"), ready["ws_url"])
    yield ready
    t0 = now = time.monotonic()
    served_before = server.served
    server.last_activity = t0
    reason = "idle"
    while True:
        await asyncio.sleep(min(0.5, req.idle_timeout / 4))
        now = time.monotonic()
        if not server.sessions and now - server.last_activity >= req.idle_timeout:
            break
        if now - t0 >= req.max_lifetime:
            reason = "max_lifetime"
            # the worker may be stopped once no job holds it: tell clients instead of cutting them
            await server.close_sessions(1001, "the streaming job reached its max_lifetime")
            break
    yield {"status": "finished", "reason": reason, "ws_url": ready["ws_url"],
           "sessions": server.served - served_before, "active_sessions": len(server.sessions),
           "seconds": round(now - t0, 1)}


async def websocket_job(job: dict, req: Request) -> dict:
    """The websocket action for the (default) plain handler: the ready message goes out as
    progress and on the stream channel; the summary is the job's output."""
    messages = serve_websocket(job, req)
    await _announce(job, await anext(messages))
    return await anext(messages)


async def generator_handler(job: dict):
    """``RUNPOD_GENERATOR_HANDLER=1``: SPEC's generator form. A websocket job yields the ready
    message (readable at ``/stream/{id}``) and then the summary; a transcribe job yields its one
    output - which RunPod then returns as a one-element list, hence not the default."""
    try:
        req = parse_request(job.get("input"))
    except ASRError as exc:
        yield {"error": str(exc)}
        return
    if req.action == "websocket":
        async for message in serve_websocket(job, req):
            yield message
    else:
        yield await handler(job)


def concurrency_modifier(current: int) -> int:
    # Enough jobs in flight to fill one dynamic batch.
    return max(1, SETTINGS.max_batch_size)


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    if os.environ.get("WORKER_MODE", "queue").lower() == "load_balancer":
        # RunPod load-balancing endpoint: traffic goes straight to our WebSocket server on PORT,
        # health checks to GET /ping on PORT_HEALTH (204 while loading, 200 when warm)
        asyncio.run(run_server(SETTINGS, SETTINGS.ws_host, SETTINGS.ws_port))
        return
    get_engine()  # load and warm up before taking jobs
    if os.environ.get("RUNPOD_GENERATOR_HANDLER", "").lower() in ("1", "true", "yes"):
        runpod.serverless.start({"handler": generator_handler, "return_aggregate_stream": True,
                                 "concurrency_modifier": concurrency_modifier})
    else:
        runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})


if __name__ == "__main__":
    main()
