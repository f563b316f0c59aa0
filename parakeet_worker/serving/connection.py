"""What a live session sees of its WebSocket (``Connection``: send text, receive a frame, close
with a code), and the one upgrade every WebSocket dialect goes through (``accept``): refusals
before the upgrade (draining, unhealthy, a wrong key) in the dialect's own shape, then the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import WSMsgType, web

from parakeet_worker.runtime import metrics
from parakeet_worker.serving.auth import offered_tokens

PING_INTERVAL_S = 20.0  # WebSocket pings keep idle proxies from dropping the connection
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


def is_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def text_refusal(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")


async def accept(
    request: web.Request,
    session_class,
    refuse: Callable[[int, str], web.Response] = text_refusal,
    protocols: tuple[str, ...] = (),
    **session_args,
) -> web.StreamResponse:
    """Upgrade to a WebSocket served by ``session_class`` (a ``LiveSession``), unless the worker is
    draining or unhealthy (503: retry on another worker) or the key is wrong (401), each refused
    before the upgrade with ``refuse(status, message)``."""
    server = request.app[SERVER_KEY]
    if server.draining:
        metrics.REFUSALS.labels("draining").inc()
        return refuse(503, "server is shutting down, try again")
    if server.unhealthy:
        metrics.REFUSALS.labels("unhealthy").inc()
        return refuse(503, "this worker cannot decode any more; connect to another")
    if not is_upgrade(request):
        return refuse(404, "WebSocket endpoint: connect with a WebSocket client")
    if server.auth_required and not server.token_ok(offered_tokens(request)):
        metrics.REFUSALS.labels("unauthorized").inc()
        return refuse(401, "unauthorized: pass the token as 'Authorization: Bearer ...' (or Token), or ?token=...")
    ws = web.WebSocketResponse(
        max_msg_size=server.settings.ws_max_message_bytes, heartbeat=PING_INTERVAL_S, protocols=protocols
    )
    await ws.prepare(request)
    await server.handle(Connection(ws), session_class, **session_args)
    return ws
