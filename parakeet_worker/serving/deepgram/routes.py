"""Deepgram's routes: the live socket and the prerecorded file route, both at ``/v1/listen``."""

from __future__ import annotations

import uuid

from aiohttp import web

from parakeet_worker.serving.connection import SERVER_KEY, accept, is_upgrade
from parakeet_worker.serving.deepgram import messages
from parakeet_worker.serving.deepgram.live import DeepgramLive
from parakeet_worker.serving.deepgram.messages import ListenError, parse_options

ROUTE = "/v1/listen"


def refuse(status: int, message: str) -> web.Response:
    """A refusal before the upgrade, as Deepgram words it (the SDK reports 401 as bad credentials)."""
    status, body = messages.http_error(status, message, str(uuid.uuid4()))
    return web.json_response(body, status=status)


async def live(request: web.Request) -> web.StreamResponse:
    if not is_upgrade(request) and request.method == "GET":
        return refuse(405, "GET /v1/listen is Deepgram's live WebSocket: connect with a WebSocket client")
    try:
        options = parse_options(request.query, request.app[SERVER_KEY].settings.stream_eou_ms)
    except ListenError as exc:
        return refuse(400, str(exc))
    # a browser can only send its key as subprotocols ("token", KEY): the answer must name one
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    return await accept(request, DeepgramLive, refuse, ("token",) if "token" in offered else (), options=options)


def add_live_route(app: web.Application) -> None:
    app.router.add_get(ROUTE, live)


def add_routes(app: web.Application) -> None:
    """The prerecorded route (where the HTTP API is served)."""
    from parakeet_worker.serving.deepgram.prerecorded import listen

    app.router.add_post(ROUTE, listen)
