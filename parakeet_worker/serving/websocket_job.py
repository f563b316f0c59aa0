"""``{"action": "websocket"}``: a RunPod job that serves real-time clients in this worker.

The job starts the WebSocket server once per worker process (on the shared engine), tells the
caller where to connect, and stays alive while clients stream: it ends when no session has been
active for ``idle_timeout`` seconds or ``max_lifetime`` is reached, or early, with ``reason:
"shutdown"``, once a SIGTERM/SIGINT drained the server (every stream got its last final and ``done``).
Imported only on that path, so a batch-only worker never loads the WebSocket stack.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.runtime import lifecycle
from parakeet_worker.serving.asr_server import ASRServer
from parakeet_worker.serving.job_schema import Request
from parakeet_worker.serving.progress import post_progress

log = logging.getLogger(__name__)

_server: ASRServer | None = None
_lock = asyncio.Lock()  # two websocket jobs arriving together start one server


async def ensure_server(settings: Settings, get_engine: Callable[[], Engine]) -> ASRServer:
    """Start the WebSocket server in this worker process once, on the shared engine. Reached
    over the pod's public IP, so it always requires a token: WS_AUTH_TOKEN, or each job's own."""
    global _server
    async with _lock:
        if _server is None:
            server = ASRServer(settings)
            server.require_token = True
            await server.attach_async(get_engine())
            try:
                await server.serve(settings.listen_host, settings.listen_port)
            except Exception:
                await server.close()
                raise
            _server = server
            # SIGTERM: flush every stream, then the job loops below end with reason "shutdown"
            lifecycle.LIFECYCLE.on_drain(
                lambda: server.drain(lifecycle.LIFECYCLE.remaining(settings.drain_timeout_s) - 2.0)
            )
    return _server


def public_ws_url(settings: Settings) -> str:
    """Where clients connect: RunPod maps the container's TCP port to a public one."""
    host = settings.runpod_public_ip or "127.0.0.1"
    return f"ws://{host}:{settings.runpod_public_ws_port or settings.listen_port}"


async def announce(settings: Settings, job: dict, message: dict) -> None:
    """Make the ready message readable while the job runs: as progress (``/status``) and on the
    job's stream channel (``/stream/{id}``). Only on RunPod; locally the SDK has no such URLs."""
    post_progress(settings, job, message)
    if settings.runpod_stream_url:
        from runpod.http_client import AsyncClientSession
        from runpod.serverless.modules.rp_http import stream_result

        try:
            async with AsyncClientSession() as session:
                await stream_result(session, {"output": message}, job)
        except Exception:  # noqa: BLE001 - /status still carries it
            log.warning("could not post the ready message to the stream channel", exc_info=True)


async def serve_websocket(job: dict, req: Request, settings: Settings, get_engine: Callable[[], Engine]):
    """Yield the ready message, serve WebSocket clients until no session has been active for
    ``idle_timeout`` seconds or ``max_lifetime`` is reached, then yield a summary."""
    server = await ensure_server(settings, get_engine)
    # a random token of this job's own (revoked when the job ends), unless the operator set one
    token = settings.auth_token or server.grant_token()
    try:
        ready = {"status": "ready", "ws_url": public_ws_url(settings), "token": token}
        log.info("websocket job %s: serving at %s", job.get("id"), ready["ws_url"])  # never the token
        yield ready
        t0 = now = time.monotonic()
        served_before = server.served
        server.mark_active()  # the idle timeout counts from this job's start
        reason = "idle"
        while True:
            await asyncio.sleep(min(0.5, req.idle_timeout / 4))
            now = time.monotonic()
            if lifecycle.LIFECYCLE.draining or server.draining:
                reason = "shutdown"
                await server.drain(lifecycle.LIFECYCLE.remaining(settings.drain_timeout_s) - 2.0)
                break
            if not server.sessions and server.idle_seconds() >= req.idle_timeout:
                break
            if now - t0 >= req.max_lifetime:
                reason = "max_lifetime"
                # the worker may be stopped once no job holds it: tell clients instead of cutting them
                await server.close_sessions(1001, "the streaming job reached its max_lifetime")
                break
    finally:
        server.revoke_token(token)  # also when the job is cancelled
    yield {
        "status": "finished",
        "reason": reason,
        "ws_url": ready["ws_url"],
        "sessions": server.served - served_before,
        "active_sessions": len(server.sessions),
        "seconds": round(now - t0, 1),
    }


async def websocket_job(job: dict, req: Request, settings: Settings, get_engine: Callable[[], Engine]) -> dict:
    """The websocket action for the (default) plain handler: the ready message goes out as
    progress and on the stream channel; the summary is the job's output."""
    messages = serve_websocket(job, req, settings, get_engine)
    await announce(settings, job, await anext(messages))
    return await anext(messages)
