"""The load-balancer (and standalone) server: one port with the microphone page, the WebSocket,
the OpenAI-compatible route, ``/ping`` and ``/metrics``. It listens first (``/ping`` answers 204
while the model loads), then serves until SIGTERM/SIGINT, then drains."""

from __future__ import annotations

import asyncio
import logging

from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.runtime import lifecycle
from parakeet_worker.runtime.scheduling import BLOCKING_POOL, run_in
from parakeet_worker.serving.asr_server import ASRServer
from parakeet_worker.serving.http_server import CLOSE_TIMEOUT_S

log = logging.getLogger("websocket")


async def run_server(settings: Settings, host: str, port: int) -> None:
    """Listen first (``/ping`` answers 204), load and warm the engine, then serve until SIGTERM or
    SIGINT; then drain (lifecycle.py) and return, so the process exits 0."""
    lifecycle.install_signal_handlers(settings.drain_timeout_s)
    stop = asyncio.Event()
    lifecycle.LIFECYCLE.on_drain(stop.set)
    server = ASRServer(settings)
    await server.serve(host, port, http_api=True)
    if settings.port_health and settings.port_health != port:
        await server.serve(host, settings.port_health)
    log.info("listening on %s:%d: page at /, WebSocket, POST /v1/audio/transcriptions, /ping, /metrics", host, port)
    # not the default executor: asyncio.run would wait for a model still loading after a SIGTERM
    loading = asyncio.ensure_future(run_in(BLOCKING_POOL, Engine, settings))
    try:
        await asyncio.wait([loading, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            engine = loading.result()
            await server.attach_async(engine)
            log.info("engine warm: %s on %s", settings.model, engine.device)
            await stop.wait()
        # the end of the drain budget is kept for closing the listeners
        await server.drain(lifecycle.LIFECYCLE.remaining(settings.drain_timeout_s) - CLOSE_TIMEOUT_S)
    finally:
        await server.close()  # its listeners too
    log.info("drained: exiting")
