"""``ASRServer``: the worker's serving state on one engine - the streaming decoder every session
shares, the open sessions, the tokens, the listeners, readiness for ``/ping``, and the drain.

Shutdown (runtime/lifecycle.py): on SIGTERM/SIGINT ``drain()`` refuses new connections (HTTP 503),
gives every open stream its last final and ``done``, closes it with 1001, lets HTTP requests in
flight be answered, and only then are the listeners closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import time

from parakeet_worker.config.errors import CLOSING
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.engine.stream_pipeline import StreamConfig
from parakeet_worker.engine.streaming import StreamDecoder
from parakeet_worker.runtime import lifecycle, metrics
from parakeet_worker.runtime.scheduling import BLOCKING_POOL, run_in
from parakeet_worker.serving.auth import token_matches
from parakeet_worker.serving.connection import Connection
from parakeet_worker.serving.http_server import Listener
from parakeet_worker.serving.http_server import serve as serve_http
from parakeet_worker.serving.live_session import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_TRY_AGAIN_LATER,
    CUT_MARGIN_S,
    LiveSession,
)
from parakeet_worker.serving.session import Session

log = logging.getLogger("websocket")


class InFlight:
    """Requests being answered, for a drain to wait on."""

    def __init__(self):
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def track(self):
        self.count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once none is in flight, False if some still are after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except TimeoutError:
            return False


class ASRServer:
    """WebSocket sessions on one engine. ``engine`` may arrive later (``attach``): until then
    ``/ping`` says 204 and connections are refused with 1013."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine: Engine | None = None
        self.decoder: StreamDecoder | None = None
        self.sessions: dict[str, Session] = {}  # by session id
        self._last_activity = time.monotonic()
        self.served = 0  # sessions completed, for the RunPod job summary
        # Tokens besides WS_AUTH_TOKEN, one per running RunPod websocket job, revoked when it ends;
        # require_token: refuse everyone without one even when WS_AUTH_TOKEN is unset.
        self.job_tokens: set[str] = set()
        self.require_token = False
        self.listeners: list[Listener] = []  # what ``serve`` started, closed by ``close``
        self.draining = False  # drain() began: refuse new connections
        self.drained = asyncio.Event()  # drain() finished: every session was flushed and closed
        self.requests = InFlight()  # HTTP API requests being answered: drain() lets them finish
        if engine is not None:
            self.attach(engine)

    def attach(self, engine: Engine) -> None:
        """Use this (warm) engine; must be called inside the running event loop."""
        s = self.settings
        self.engine = engine
        self.decoder = StreamDecoder(engine, StreamConfig.from_settings(s))
        self.decoder.start()

    async def attach_async(self, engine: Engine) -> None:
        """``attach`` with the streaming pipeline built off the event loop (it waits for the
        engine's lock, which a batch pass may hold for a while)."""
        self.engine = engine
        self.decoder = await run_in(BLOCKING_POOL, StreamDecoder, engine, StreamConfig.from_settings(self.settings))
        self.decoder.start()

    def mark_active(self) -> None:
        """Something happened (a connection, a message, a websocket job started): see idle_seconds."""
        self._last_activity = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds since the last activity, for the websocket job's idle timeout."""
        return time.monotonic() - self._last_activity

    @property
    def ready(self) -> bool:
        return (
            self.decoder is not None
            and not self.decoder.failed
            and bool(self.engine and self.engine.ready)
            and not self.unhealthy
        )

    @property
    def unhealthy(self) -> str:
        """Why this worker cannot serve any more ("" while it can): a lost GPU, or a streaming
        scheduler that died. Not "loading": the platform must replace it, not wait for it."""
        if lifecycle.LIFECYCLE.poisoned:
            return "GPU failed"
        if self.engine is not None and self.engine.lost:
            return "GPU failed"
        if self.decoder is not None and self.decoder.failed:
            return "streaming decoder stopped"
        return ""

    @property
    def auth_required(self) -> bool:
        return bool(self.settings.stream_token) or self.require_token or bool(self.job_tokens)

    def token_ok(self, offered: list[str]) -> bool:
        valid = ([self.settings.stream_token] if self.settings.stream_token else []) + sorted(self.job_tokens)
        return token_matches(offered, valid)

    def grant_token(self) -> str:
        """A fresh random token, valid until ``revoke_token`` (a RunPod websocket job's own)."""
        token = secrets.token_urlsafe(24)
        self.job_tokens.add(token)
        return token

    def revoke_token(self, token: str) -> None:
        self.job_tokens.discard(token)

    # ---- one connection
    def not_serving(self) -> str:
        """Why no new work is taken now - "draining", "unhealthy" or "loading" (also the metrics
        label) - or "" while it is; every route words it in its own dialect."""
        if self.draining:
            return "draining"
        if self.unhealthy:
            return "unhealthy"
        return "" if self.ready else "loading"

    def refusal(self) -> tuple[str, int, str] | None:
        """Why a new connection is refused now (metrics label, close code, reason), or None."""
        why = self.not_serving()
        if why == "draining":
            return why, CLOSE_TRY_AGAIN_LATER, "server is shutting down, try again"
        if why == "unhealthy":
            return why, CLOSE_INTERNAL_ERROR, "this worker cannot decode; reconnect to another"
        if why == "loading":
            return why, CLOSE_TRY_AGAIN_LATER, "model is loading, try again shortly"
        if len(self.sessions) >= self.settings.ws_max_sessions:
            n = self.settings.ws_max_sessions
            return "capacity", CLOSE_TRY_AGAIN_LATER, f"server at capacity ({n} sessions)"
        return None

    async def handle(self, ws: Connection, session_class: type[LiveSession] = Session, **session_args) -> None:
        """One WebSocket connection, in the dialect ``session_class`` speaks."""
        refused = self.refusal()
        if refused is not None:
            label, code, reason = refused
            metrics.REFUSALS.labels(label).inc()
            await session_class.refuse(ws, code, reason)
            return
        session = session_class(self, ws, **session_args)
        self.sessions[session.id] = session
        metrics.ACTIVE_SESSIONS.set(len(self.sessions))
        metrics.SESSIONS.labels(session.dialect).inc()
        self.mark_active()
        try:
            await session.run()
        finally:
            session.abort()
            self.sessions.pop(session.id, None)
            metrics.ACTIVE_SESSIONS.set(len(self.sessions))
            self.served += 1
            self.mark_active()
            session.log_end()
            metrics.SESSIONS.labels(session.dialect).dec()

    async def serve(self, host: str, port: int, *, http_api: bool = False) -> Listener:
        """Start listening (``port=0`` picks a free port); ``http_api``: also the page and the
        OpenAI-compatible route (http_server.py)."""
        warning = self.exposure_warning(host)
        if warning:
            log.warning(warning)
        listener = await serve_http(self, host, port, http_api=http_api)
        self.listeners.append(listener)
        return listener

    def exposure_warning(self, host: str) -> str | None:
        """Said at start when anyone who can reach this address may stream without a token."""
        if self.auth_required or _is_loopback(host):
            return None
        return (
            f"listening on {host or 'all interfaces'} without a token: any program that can reach this port "
            "can stream audio and post files to this worker (web pages of other origins are refused, other "
            "clients are not); set API_TOKEN or WS_AUTH_TOKEN"
        )

    async def close_sessions(self, code: int, reason: str) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.error(CLOSING, reason)
                await session.ws.close(code, reason)

    async def drain(self, timeout_s: float) -> None:
        """Graceful shutdown: refuse new connections and requests, give every open stream its last
        final and ``done``, close each session with 1001, and let HTTP API requests in flight be
        answered, all within ``timeout_s``; sessions still open then are closed as they are.
        Idempotent; ``drained`` is set at the end."""
        if self.draining:
            await self.drained.wait()
            return
        self.draining = True
        deadline = time.monotonic() + max(0.1, timeout_s)
        sessions = list(self.sessions.values())
        log.info(
            "draining %d session(s) and %d HTTP request(s), at most %.1f s",
            len(sessions),
            self.requests.count,
            timeout_s,
        )
        if sessions:
            # a stream the server is too far behind to flush in time is ended with what it has,
            # shortly before the deadline, so that it still gets its last final and done
            cut_at = deadline - min(CUT_MARGIN_S, 0.25 * max(0.1, timeout_s))
            flushes = [asyncio.ensure_future(s.shutdown("server shutting down", cut_at)) for s in sessions]
            done, pending = await asyncio.wait(flushes, timeout=max(0.1, deadline - time.monotonic()))
            for f in pending:
                f.cancel()
            for session in list(self.sessions.values()):  # too slow to flush: close them as they are
                with contextlib.suppress(Exception):
                    await session.ws.close(CLOSE_GOING_AWAY, "server shutting down")
        if not await self.requests.wait_idle(max(0.1, deadline - time.monotonic())):
            log.warning("drain: %d HTTP request(s) still running at the deadline", self.requests.count)
        self.drained.set()

    async def close(self) -> None:
        for listener in self.listeners:
            await listener.close()
        if self.decoder is not None:
            await self.decoder.stop()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "", "0.0.0.0"-style names and host names: assume reachable from outside
