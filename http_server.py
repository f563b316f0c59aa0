"""The worker's one HTTP server (aiohttp): WebSocket upgrades become ``ASRServer`` sessions,
``GET /ping`` reports readiness (200 warm, 204 loading, 503 draining or unhealthy), and the
standalone / load-balancer server adds the microphone page at ``GET /`` and
``POST /v1/audio/transcriptions`` (openai_api.py) - all on one port.

The protocol itself lives in websocket_handler.py; a session sees its socket only through
``Connection`` (send text, receive a frame, close with a code).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractAccessLogger

import metrics

PING_INTERVAL_S = 20.0  # WebSocket pings keep idle proxies from dropping the connection
DEMO_PAGE = Path(__file__).resolve().parent / "static" / "index.html"
SERVER_KEY = web.AppKey("asr_server")  # the app's ASRServer, for the route handlers


class ConnectionClosed(Exception):
    """The client went away, or the connection was closed: its session ends."""


class Connection:
    """What a session needs from a WebSocket, over aiohttp's ``WebSocketResponse``."""

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws

    async def send(self, text: str) -> None:
        if self.ws.closed:
            raise ConnectionClosed
        try:
            await self.ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:  # the transport closed under us
            raise ConnectionClosed from exc

    async def recv(self, timeout: float) -> str | bytes:
        """The next text (str) or binary (bytes) message; TimeoutError after ``timeout`` s without
        one. (Around the whole call: aiohttp's own receive timeout restarts at every pong, so
        keep-alive pings would keep an idle session open forever.)"""
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            return msg.data
        # CLOSE/CLOSED, or ERROR: aiohttp has closed the connection, e.g. 1009 for a message
        # over WS_MAX_MESSAGE_BYTES
        raise ConnectionClosed

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])


def offered_tokens(request: web.Request) -> list[str]:
    """Tokens the client offers: one ``Authorization: Bearer`` and/or one ``?token=`` (either may
    match: a proxy may put its own credentials in the header). A request that repeats ``token``
    offers nothing: one request is at most two guesses."""
    query = request.query.getall("token", [])  # parsed: ``%74oken`` is ``token`` here too
    if len(query) > 1:
        return []
    offered = list(query)
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        offered.append(auth[7:].strip())
    return offered


def authorized(request: web.Request, token: str) -> bool:
    """No token configured, or the client offers it."""
    return not token or any(hmac.compare_digest(given.encode(), token.encode()) for given in offered_tokens(request))


# ---------------------------------------------------------------------------------------------
# routes
async def ping(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    if server.unhealthy:  # the platform must replace this worker, not wait for it
        return web.json_response({"status": "unhealthy", "reason": server.unhealthy}, status=503)
    if server.draining:
        return web.json_response({"status": "draining"}, status=503)
    if server.ready:
        return web.json_response({"status": "ready"})
    return web.Response(status=204)


def _is_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


async def websocket(request: web.Request) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    if server.draining:  # refused before the upgrade: the client may retry on another worker
        metrics.REFUSALS.labels("draining").inc()
        return web.Response(status=503, text="server is shutting down, try again\n")
    if server.unhealthy:
        metrics.REFUSALS.labels("unhealthy").inc()
        return web.Response(status=503, text="this worker cannot decode any more; connect to another\n")
    if not _is_upgrade(request):
        return web.Response(status=404, text="WebSocket endpoint: connect with a WebSocket client\n")
    if server.auth_required and not server.token_ok(offered_tokens(request)):
        return web.Response(status=401,
                            text="unauthorized: pass the token as ?token=... or 'Authorization: Bearer ...'\n")
    ws = web.WebSocketResponse(max_msg_size=server.settings.ws_max_message_bytes, heartbeat=PING_INTERVAL_S)
    await ws.prepare(request)
    await server.handle(Connection(ws))
    return ws


async def metrics_page(request: web.Request) -> web.Response:
    body = metrics.render()
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def page(request: web.Request) -> web.StreamResponse:
    """``GET /``: the microphone page, unless the request is the WebSocket upgrade."""
    if _is_upgrade(request):
        return await websocket(request)
    return web.FileResponse(DEMO_PAGE, headers={"Cache-Control": "no-cache"})


def build_app(server, *, http_api: bool = False) -> web.Application:
    """``/ping`` and the WebSocket upgrade on any path; with ``http_api`` also the microphone page
    at ``/`` and ``POST /v1/audio/transcriptions``."""
    app = web.Application()
    app[SERVER_KEY] = server
    app.router.add_get("/ping", ping)
    app.router.add_get("/health", ping)
    app.router.add_get("/metrics", metrics_page)
    if http_api:
        import openai_api  # the HTTP API only where it is served

        app.router.add_post(openai_api.ROUTE, openai_api.transcriptions)
        app.router.add_get("/v1/models", openai_api.models)
        app.router.add_get("/v1/models/{model:.+}", openai_api.models)
        app.router.add_get("/", page)
    app.router.add_get("/{path:.*}", websocket)
    return app


@dataclass
class Listener:
    """One listening server (``port`` is the real one when 0 was asked for)."""

    runner: web.AppRunner
    port: int
    closed: bool = False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.runner.cleanup()


class _RequestLog(AbstractAccessLogger):
    """One DEBUG line per request ("GET /path 101"): health checks would flood INFO. The path
    only, never the query: a token may be in it under any spelling the parser accepts."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug("%s %s %s", request.method, request.path, response.status)


async def serve(server, host: str, port: int, *, http_api: bool = False,
                request_log: logging.Logger | None = None) -> Listener:
    """Start listening (``port=0`` picks a free port)."""
    runner = web.AppRunner(build_app(server, http_api=http_api), shutdown_timeout=5.0,
                           access_log_class=_RequestLog, access_log=request_log)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return Listener(runner, runner.addresses[0][1])
