"""The worker's one HTTP server (aiohttp): WebSocket upgrades become ``ASRServer`` sessions,
``GET /ping`` reports readiness (200 warm, 204 loading, 503 draining or unhealthy), and the
standalone / load-balancer server adds the microphone page at ``GET /`` and
``POST /v1/audio/transcriptions`` (serving/openai/) - all on one port.

The protocol itself lives in websocket_handler.py; a session sees its socket only through
``Connection`` (send text, receive a frame, close with a code).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from parakeet_worker.config.logs import quiet_client_errors, request_log
from parakeet_worker.runtime import metrics
from parakeet_worker.serving.connection import SERVER_KEY, accept, is_upgrade

DEMO_PAGE = Path(__file__).resolve().parent / "static" / "index.html"


def _host_name(host: str) -> str:
    """A Host header's name, lowercase, without its port ("[::1]:80" -> "[::1]")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@web.middleware
async def origin_and_host_guard(request: web.Request, handler):
    """Without a token, the port must not serve other web sites' pages (a cross-origin WebSocket
    or form POST needs no preflight) nor answer names it does not own (DNS rebinding turns a
    foreign page into a same-origin one). With a token the token decides: a page without it
    gets nothing anyway. Health checks are exempt (the platform calls them by address)."""
    server = request.app[SERVER_KEY]
    settings = server.settings
    if request.path in ("/ping", "/health") or settings.stream_token or server.require_token:
        return await handler(request)
    host = _host_name(request.host or "")
    if not settings.host_allowed(host):
        metrics.REFUSALS.labels("host").inc()
        return _refuse(request, 421, f"this server does not answer to the name '{host[:80]}' (ALLOWED_HOSTS)")
    origin = request.headers.get("Origin")
    if origin is not None:
        own = {h.lower() for h in (request.host, request.headers.get("X-Forwarded-Host")) if h}
        netloc = origin.lower().split("://", 1)[-1]
        if netloc not in own and origin.lower().rstrip("/") not in settings.allowed_origins:
            metrics.REFUSALS.labels("origin").inc()
            return _refuse(request, 403, "requests from other web sites are refused (ALLOWED_ORIGINS)")
    return await handler(request)


def _refuse(request: web.Request, status: int, message: str) -> web.Response:
    if request.path.startswith("/v1/"):  # the OpenAI routes answer in OpenAI's error shape
        return web.json_response(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": "forbidden"}},
            status=status,
        )
    return web.Response(status=status, text=message + "\n")


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


async def websocket(request: web.Request) -> web.StreamResponse:
    """The product's own protocol, on any path not taken by another route."""
    from parakeet_worker.serving.session import Session

    return await accept(request, Session)


async def metrics_page(request: web.Request) -> web.Response:
    body = metrics.render()
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def _inline_hashes(html: str, tag: str) -> str:
    """CSP source expressions for the page's inline ``<tag>`` blocks (their exact text, hashed)."""
    import base64
    import hashlib
    import re

    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


_PAGE = DEMO_PAGE.read_text(encoding="utf-8")
_SCRIPT_SRC, _STYLE_SRC = _inline_hashes(_PAGE, "script"), _inline_hashes(_PAGE, "style")


def page_headers(request: web.Request) -> dict[str, str]:
    """The page runs only its own script (by hash; its audio worklet is a blob: module), talks
    only to this server's WebSocket and those in PAGE_CONNECT_SRC, and cannot be framed."""
    host = request.host
    connect = " ".join(["'self'", f"ws://{host}", f"wss://{host}", *request.app[SERVER_KEY].settings.page_connect_src])
    csp = (
        f"default-src 'none'; script-src {_SCRIPT_SRC} blob:; style-src {_STYLE_SRC}; connect-src {connect}; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }


async def page(request: web.Request) -> web.StreamResponse:
    """``GET /``: the microphone page, unless the request is the WebSocket upgrade."""
    if is_upgrade(request):
        return await websocket(request)
    return web.Response(text=_PAGE, content_type="text/html", headers=page_headers(request))


def build_app(server, *, http_api: bool = False) -> web.Application:
    """``/ping`` and the WebSocket upgrade on any path; with ``http_api`` also the microphone page
    at ``/`` and ``POST /v1/audio/transcriptions``."""
    app = web.Application(middlewares=[track_requests, origin_and_host_guard])
    app[SERVER_KEY] = server
    app.router.add_get("/ping", ping)
    app.router.add_get("/health", ping)
    app.router.add_get("/metrics", metrics_page)
    from parakeet_worker.serving.deepgram import routes as deepgram_routes
    from parakeet_worker.serving.openai import routes as openai_routes

    # the other dialects' live sockets: Deepgram's /v1/listen, OpenAI's /v1/realtime
    deepgram_routes.add_live_route(app)
    openai_routes.add_realtime_route(app)
    if http_api:
        from parakeet_worker.serving import upload  # only where the HTTP API is served

        upload.install(app, server)
        openai_routes.add_routes(app)
        deepgram_routes.add_routes(app)
        app.router.add_get("/", page)
    app.router.add_get("/{path:.*}", websocket)
    return app


# ---------------------------------------------------------------------------------------------
# connections: deadlines and a cap, below the routes (a socket that never sends a request never
# reaches a handler, so no middleware could time it out)
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
SWEEP_S = 1.0  # how often idle connections are checked
# closing a listener: what a request still running may take after the drain (whose budget has
# passed by then); app.py keeps this second of the drain budget for it
CLOSE_TIMEOUT_S = 1.0


class _GuardedServer(web.Server):
    """aiohttp's connection manager, plus: over ``max_connections`` a new connection is answered
    503 and closed at once (before any parsing, so descriptors are not exhausted), and a
    connection with no request in progress is closed once it has been idle past its deadline:
    ``header_timeout_s`` before its first request is complete, ``keepalive_timeout_s`` between
    requests. A request in progress (an upload, a WebSocket session) is the handlers' to bound."""

    def guard(self, limits) -> None:
        self.limits = limits
        self.idle_since: dict = {}  # RequestHandler -> loop time it last became idle
        self.served: dict = {}  # RequestHandler -> requests started on it
        self.busy: set = set()  # RequestHandlers with a request in progress
        self.sweeper: asyncio.Task | None = None

    def connection_made(self, handler, transport) -> None:
        if len(self.connections) >= self.limits.connection_cap:
            metrics.REFUSALS.labels("connections").inc()
            transport.write(_BUSY)
            transport.close()
            return
        super().connection_made(handler, transport)
        self.idle_since[handler] = self._loop.time()
        if self.sweeper is None:
            self.sweeper = self._loop.create_task(self._sweep(), name="http-idle-sweeper")

    def connection_lost(self, handler, exc=None) -> None:
        super().connection_lost(handler, exc)
        self.idle_since.pop(handler, None)
        self.served.pop(handler, None)
        self.busy.discard(handler)

    def request_started(self, handler) -> None:
        self.busy.add(handler)
        self.served[handler] = self.served.get(handler, 0) + 1

    def request_ended(self, handler) -> None:
        self.busy.discard(handler)
        if handler in self.idle_since:
            self.idle_since[handler] = self._loop.time()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = self._loop.time()
            for handler, since in list(self.idle_since.items()):
                if handler in self.busy:
                    continue
                limit = self.limits.keepalive_timeout_s if self.served.get(handler) else self.limits.header_timeout_s
                if now - since > limit:
                    transport = self._connections.get(handler)
                    self.idle_since.pop(handler, None)
                    if transport is not None:
                        metrics.REFUSALS.labels("idle_connection").inc()
                        transport.close()

    def pre_shutdown(self) -> None:
        """The listening socket is closed: a connection with no request in progress is answered
        503 and closed at once. aiohttp would only mark it closing and then drop any request
        that arrives on it, leaving its client waiting until the shutdown timeout (a health
        check that connects as the listener closes would hang instead of hearing "draining")."""
        super().pre_shutdown()
        for handler, transport in list(self._connections.items()):
            # aiohttp's own flag: true from the handler's start until the response is written
            if getattr(handler, "_request_in_progress", True) or getattr(handler, "_messages", None):
                continue  # answered by its handler, within the shutdown timeout
            self.idle_since.pop(handler, None)
            if not transport.is_closing():
                transport.write(_BUSY)
                transport.close()

    async def shutdown(self, timeout=None) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        await super().shutdown(timeout)


class _GuardedRunner(web.AppRunner):
    def __init__(self, app: web.Application, limits, **kwargs):
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _GuardedServer  # aiohttp builds it inside Application; only behaviour is added
        server.guard(self._limits)
        return server


@web.middleware
async def track_requests(request: web.Request, handler):
    """Tell the connection manager a request is in progress (its idle deadline does not apply)."""
    server = request.protocol._manager if request.protocol is not None else None
    if not isinstance(server, _GuardedServer):
        return await handler(request)
    server.request_started(request.protocol)
    try:
        return await handler(request)
    finally:
        server.request_ended(request.protocol)


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


async def serve(server, host: str, port: int, *, http_api: bool = False) -> Listener:
    """Start listening (``port=0`` picks a free port). ``handler_cancellation``: a client that
    goes away cancels its request's handler, so its decoding and transcription stop (its temp
    files and ffmpeg go with them) instead of running to the end for nobody."""
    s = server.settings
    quiet_client_errors()
    runner = _GuardedRunner(
        build_app(server, http_api=http_api),
        s,
        shutdown_timeout=CLOSE_TIMEOUT_S,
        access_log_class=_RequestLog,
        access_log=request_log(),
        handler_cancellation=True,
        keepalive_timeout=s.keepalive_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return Listener(runner, runner.addresses[0][1])
