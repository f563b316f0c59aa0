"""What every live WebSocket dialect shares: one connection's receive loop with its idle deadline,
its registration with the server (capacity, metrics by dialect), its drain, and its one log line.

A dialect (serving/session.py, deepgram/live.py, openai/realtime.py) subclasses ``LiveSession``
and says what a text frame and an audio frame mean (``on_text``, ``on_audio``), what the client
hears at the start (``greet``), how its stream ends when the server drains (``finish``) and how
an error is worded (``error``). Its audio goes through a ``LiveAudio`` (live.py) into the one
streaming decoder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.errors import IDLE_TIMEOUT, INTERNAL_ERROR, INVALID_JSON, ASRError
from parakeet_worker.runtime import metrics
from parakeet_worker.serving.connection import Connection, ConnectionClosed
from parakeet_worker.serving.live import LiveAudio

log = logging.getLogger("websocket")
CLOSE_TRY_AGAIN_LATER = 1013  # over capacity / still loading
CLOSE_GOING_AWAY = 1001  # the server is shutting down (after the stream's last final and done)
CLOSE_INTERNAL_ERROR = 1011  # the worker cannot decode any more (a lost GPU): reconnect elsewhere
CUT_MARGIN_S = 1.0  # a drain ends a stream still being decoded this long before its deadline


def parse_message(raw: str) -> dict:
    """A client's text frame as a JSON object, or ASRError(INVALID_JSON): never any other
    exception (deep nesting raises RecursionError inside json, huge numbers ValueError...)."""
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError, TypeError):
        raise ASRError(INVALID_JSON, "text frames must be JSON objects") from None
    if not isinstance(msg, dict):
        raise ASRError(INVALID_JSON, "text frames must be JSON objects")
    return msg


class LiveSession:
    """One WebSocket connection of some dialect. ``dialect`` labels its metrics and log line."""

    dialect = "stream"

    def __init__(self, server, ws: Connection):  # server: the ASRServer (asr_server.py)
        self.server = server
        self.ws = ws
        self.id = uuid.uuid4().hex
        self.live: LiveAudio | None = None  # the audio being decoded now, if any
        self.partial = ""  # the current utterance's latest partial (a drain's cut-off ends with it)
        self.streams = 0  # LiveAudio's opened on this connection
        self.audio_s = 0.0  # seconds of audio of the LiveAudio's already ended
        self.control = asyncio.Lock()  # start/stop/shutdown one at a time
        self.closing = False  # the server is shutting this session down: audio is ignored
        self.t0 = time.monotonic()
        self.outcome = "client_closed"

    # ---- what a dialect provides
    @classmethod
    async def refuse(cls, ws: Connection, code: int, reason: str) -> None:
        """A connection the server cannot take now (loading, full, draining, unhealthy)."""
        await ws.close(code, reason)

    async def greet(self) -> None:
        """The first message(s) on a new connection."""

    async def on_text(self, raw: str) -> None:
        raise NotImplementedError

    async def on_audio(self, data: bytes) -> None:
        raise NotImplementedError

    async def error(self, code: str, message: str) -> None:
        """Tell the client about an error, in the dialect's shape."""
        raise NotImplementedError

    async def finish(self, reason: str) -> None:
        """The server drains: end the open stream, if any, as the client's own end of it would
        (its last results, in the dialect's shape). Called holding ``control``."""
        raise NotImplementedError

    # ---- the drain, alike in every dialect
    async def shutdown(self, reason: str, cut_at: float | None = None) -> None:
        """The server drains: the open stream is finished (``finish``), then the connection closes
        with 1001. If its last step has not come by ``cut_at`` (time.monotonic(); the server is
        behind real time), it is cut off first, so that its last results still precede the close."""
        self.closing = True
        self.outcome = "shutdown"
        timer = None
        if cut_at is not None:
            timer = asyncio.get_running_loop().call_later(max(0.0, cut_at - time.monotonic()), self.cut_off)
        try:
            async with self.control:
                with contextlib.suppress(ConnectionClosed):
                    await self.finish(reason)
        finally:
            if timer is not None:
                timer.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close(CLOSE_GOING_AWAY, reason)

    def cut_off(self) -> bool:
        """End the current stream now, its latest partial as its last final (the relay sends it as
        any final). False if there is none, or its last update is already queued."""
        live = self.live
        if live is None or live.closed:
            return False
        live.cut_off(self.partial)
        return True

    def idle_limit(self) -> float:
        """Seconds without a valid message before the session is closed."""
        s = self.server.settings
        return s.ws_idle_timeout_s if self.streams else min(s.ws_idle_timeout_s, s.ws_start_timeout_s)

    # ---- shared
    def open_live(self, sample_rate: int, boosting=None, eou_ms: int | None = None) -> LiveAudio:
        self.live = LiveAudio(self.server.decoder, sample_rate, boosting, eou_ms)
        self.streams += 1
        return self.live

    def close_live(self) -> None:
        """The current LiveAudio is over: count its audio."""
        if self.live is not None:
            self.audio_s += self.live.samples_in / SAMPLE_RATE
            self.live = None

    def owes_results(self) -> bool:
        """The server still has this client's audio to decode: silence from it is not idleness."""
        live = self.live
        return self.closing or (
            live is not None and not live.closed and live.pending_samples >= self.server.decoder.frame_samples
        )

    def log_end(self) -> None:
        """The session's one structured log line (never its audio or text)."""
        ok = self.outcome in ("client_closed", "shutdown")
        metrics.REQUESTS.labels(self.dialect, "ok" if ok else "error").inc()
        audio_s = self.audio_s + (self.live.samples_in / SAMPLE_RATE if self.live else 0.0)
        metrics.event(
            "session",
            id=self.id,
            dialect=self.dialect,
            outcome=self.outcome,
            seconds=round(time.monotonic() - self.t0, 3),
            audio_s=round(audio_s, 3),
            streams=self.streams,
        )

    async def send_json(self, msg: dict) -> None:
        await self.ws.send(json.dumps(msg, ensure_ascii=False))

    async def run(self) -> None:
        """Receive until the client goes, the session idles out, or the server closes it. Only
        valid messages count as activity: junk every few seconds must not hold a slot."""
        await self.greet()
        last_valid = time.monotonic()
        while True:
            limit = self.idle_limit()
            try:
                msg = await self.ws.recv(timeout=max(0.01, last_valid + limit - time.monotonic()))
            except TimeoutError:
                if self.owes_results():
                    last_valid = time.monotonic()
                    continue
                self.outcome = IDLE_TIMEOUT
                why = f"no valid message for {limit:g} s" if self.streams else f"no stream started within {limit:g} s"
                with contextlib.suppress(ConnectionClosed):
                    await self.error(IDLE_TIMEOUT, f"{why}, closing the session")
                    await self.ws.close(1000, "idle timeout")
                return
            except ConnectionClosed:
                if self.live is not None and not self.live.finished and not self.closing:
                    self.outcome = "client_gone"  # mid-utterance, without stop
                return
            try:
                if isinstance(msg, bytes):
                    await self.on_audio(msg)
                else:
                    await self.on_text(msg)
            except ASRError as e:  # a recoverable client mistake: the connection stays open
                metrics.error(e.code)
                await self.error(e.code, e.message)
                continue
            except ConnectionClosed:
                return
            except Exception:  # noqa: BLE001 - a bug: the client is told and the connection closed, never dropped
                log.exception("%s session %s: handling a message failed", self.dialect, self.id)
                metrics.error(INTERNAL_ERROR)
                self.outcome = INTERNAL_ERROR
                with contextlib.suppress(Exception):
                    await self.error(INTERNAL_ERROR, "the server failed to handle a message; reconnect")
                    await self.ws.close(CLOSE_INTERNAL_ERROR, "internal error")
                return
            last_valid = time.monotonic()
            self.server.mark_active()

    async def guard_relay(self, work, live: LiveAudio, message: str) -> bool:
        """Run a relay (``work``: a coroutine sending ``live``'s results): a client gone ends it
        quietly; a bug is logged, the stream dropped (as a failed step: later audio is dropped)
        and the client told ``message`` - never left waiting. False after such a failure."""
        try:
            await work
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - a bug here must not leave the client waiting silently
            log.exception("%s session %s: sending results failed", self.dialect, self.id)
            live.abort()
            live.stream.failed = True
            with contextlib.suppress(Exception):
                await self.error(INTERNAL_ERROR, message)
            return False
        return True

    def abort(self) -> None:
        """The connection ended: free the decoder's state and stop relaying."""
        if self.live is not None:
            self.live.abort()
