"""Real-time transcription over WebSocket: the protocol (docs/PROTOCOL.md) on top of the streaming decoder.

    python websocket_handler.py --port 8765          # loads PARAKEET_MODEL, serves ws://0.0.0.0:8765

One connection is one session: welcome -> start -> binary PCM16 audio -> partial and final
``transcription`` messages -> stop -> done, and again (docs/PROTOCOL.md has the messages). Every
session's audio goes to the shared ``StreamDecoder``, which decodes all sessions together in one
batched step.
The HTTP side is http_server.py (aiohttp): the upgrade, ``GET /ping`` (200 warm, 204 loading, 503
draining), ``GET /metrics`` (metrics.py), and in ``run_server`` - the standalone / load-balancer
server - the microphone page and the OpenAI-compatible route, all on one port.

Shutdown (lifecycle.py): on SIGTERM/SIGINT ``drain()`` refuses new connections (HTTP 503), gives
every open stream its last final and ``done``, closes it with 1001, and only then stops listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
import uuid
from dataclasses import asdict

import numpy as np
import soxr

import audio_utils
import hardware
import lifecycle
import metrics
from asr_engine import Engine
from constants import SAMPLE_RATE
from errors import (
    ALREADY_STARTED,
    AUDIO_TOO_LONG,
    CLOSING,
    IDLE_TIMEOUT,
    INTERNAL_ERROR,
    INVALID_INPUT,
    INVALID_JSON,
    INVALID_SAMPLE_RATE,
    NOT_STARTED,
    UNKNOWN_ACTION,
    ASRError,
)
from hotwords import HotwordError, parse_hotwords
from http_server import Connection, ConnectionClosed, Listener
from http_server import serve as serve_http
from scheduling import DECODE_POOL, run_in
from settings import Settings, configure_logging
from streaming import StreamConfig, StreamDecoder, StreamUpdate

log = logging.getLogger("websocket")


class _RedactTokens(logging.Filter):
    """The server logs each request line at DEBUG (http_server's request log): the token must never
    be in it."""

    SECRET = re.compile(r"(token=)[^&\s]+|(authorization:?\s*)(bearer\s+)?\S+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.SECRET.sub(lambda m: (m.group(1) or m.group(2) + (m.group(3) or "")) + "<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


connection_log = logging.getLogger("websocket.connections")  # the request log, redacted
connection_log.addFilter(_RedactTokens())

MIN_RATE, MAX_RATE = 8000, 48000
CLOSE_TRY_AGAIN_LATER = 1013  # over capacity / still loading
CLOSE_GOING_AWAY = 1001  # the server is shutting down (after the stream's last final and done)
CLOSE_INTERNAL_ERROR = 1011  # the worker cannot decode any more (a lost GPU): reconnect elsewhere
MAX_BACKLOG_S = 10.0  # undecoded audio per stream before we stop reading from its socket
CUT_MARGIN_S = 1.0  # a drain ends a stream still being decoded this long before its deadline (Session.cut_off)


class ASRServer:
    """WebSocket sessions on one engine. ``engine`` may arrive later (``attach``): until then
    ``/ping`` says 204 and connections are refused with 1013."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        self.engine: Engine | None = None
        self.decoder: StreamDecoder | None = None
        self.sessions: dict[str, Session] = {}
        self._last_activity = time.monotonic()
        self.served = 0  # sessions completed, for the RunPod job summary
        # Tokens besides WS_AUTH_TOKEN, one per running RunPod websocket job, revoked when it ends;
        # require_token: refuse everyone without one even when WS_AUTH_TOKEN is unset.
        self.job_tokens: set[str] = set()
        self.require_token = False
        self.listeners: list[Listener] = []  # what ``serve`` started, closed by ``close``
        self.draining = False  # drain() began: refuse new connections
        self.drained = asyncio.Event()  # drain() finished: every session was flushed and closed
        # memory all concurrent HTTP API decodes may hold together (openai_api.py)
        self.decode_budget = audio_utils.DecodeBudget(settings.decode_budget_bytes)
        self._http_in_flight = 0  # HTTP API requests being served: drain() lets them finish
        self._http_idle = asyncio.Event()
        self._http_idle.set()
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
        self.decoder = await run_in(DECODE_POOL, StreamDecoder, engine, StreamConfig.from_settings(self.settings))
        self.decoder.start()

    def mark_active(self) -> None:
        """Something happened (a connection, a message, a websocket job started): see idle_seconds."""
        self._last_activity = time.monotonic()

    def idle_seconds(self) -> float:
        """Seconds since the last activity, for the websocket job's idle timeout."""
        return time.monotonic() - self._last_activity

    @property
    def ready(self) -> bool:
        return (self.decoder is not None and not self.decoder.failed and bool(self.engine and self.engine.ready)
                and not self.unhealthy)

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

    def token_ok(self, given: list[str]) -> bool:
        valid = ([self.settings.stream_token] if self.settings.stream_token else []) + sorted(self.job_tokens)
        return any(hmac.compare_digest(g.encode(), v.encode()) for g in given for v in valid)

    def grant_token(self) -> str:
        """A fresh random token, valid until ``revoke_token`` (a RunPod websocket job's own)."""
        token = secrets.token_urlsafe(24)
        self.job_tokens.add(token)
        return token

    def revoke_token(self, token: str) -> None:
        self.job_tokens.discard(token)

    # ---- one connection
    async def handle(self, ws: Connection) -> None:
        if self.draining:
            metrics.REFUSALS.labels("draining").inc()
            await ws.close(CLOSE_TRY_AGAIN_LATER, "server is shutting down, try again")
            return
        if self.unhealthy:
            metrics.REFUSALS.labels("unhealthy").inc()
            await ws.close(CLOSE_INTERNAL_ERROR, "this worker cannot decode; reconnect to another")
            return
        if not self.ready:
            metrics.REFUSALS.labels("loading").inc()
            await ws.close(CLOSE_TRY_AGAIN_LATER, "model is loading, try again shortly")
            return
        if len(self.sessions) >= self.settings.ws_max_sessions:
            metrics.REFUSALS.labels("capacity").inc()
            await ws.close(CLOSE_TRY_AGAIN_LATER, f"server at capacity ({self.settings.ws_max_sessions} sessions)")
            return
        session = Session(self, ws)
        self.sessions[session.id] = session
        metrics.ACTIVE_SESSIONS.set(len(self.sessions))
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

    async def serve(self, host: str, port: int, *, http_api: bool = False) -> Listener:
        """Start listening (``port=0`` picks a free port); ``http_api``: also the page and the
        OpenAI-compatible route (http_server.py)."""
        warning = self.exposure_warning(host)
        if warning:
            log.warning(warning)
        listener = await serve_http(self, host, port, http_api=http_api, request_log=connection_log)
        self.listeners.append(listener)
        return listener

    def exposure_warning(self, host: str) -> str | None:
        """Said at start when anyone who can reach this address may stream without a token."""
        if self.auth_required or _is_loopback(host):
            return None
        return (f"listening on {host or 'all interfaces'} without a token: any program that can reach this port "
                "can stream audio and post files to this worker (web pages of other origins are refused, other "
                "clients are not); set API_TOKEN or WS_AUTH_TOKEN")

    async def close_sessions(self, code: int, reason: str) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.error(CLOSING, reason)
                await session.ws.close(code, reason)

    @contextlib.contextmanager
    def http_request(self):
        """Around an HTTP API request (openai_api.py): a drain waits for it to be answered."""
        self._http_in_flight += 1
        self._http_idle.clear()
        try:
            yield
        finally:
            self._http_in_flight -= 1
            if not self._http_in_flight:
                self._http_idle.set()

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
        log.info("draining %d session(s) and %d HTTP request(s), at most %.1f s", len(sessions),
                 self._http_in_flight, timeout_s)
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
        if self._http_in_flight:
            try:
                await asyncio.wait_for(self._http_idle.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.warning("drain: %d HTTP request(s) still running at the deadline", self._http_in_flight)
        self.drained.set()

    async def close(self) -> None:
        for listener in self.listeners:
            await listener.close()
        if self.decoder is not None:
            await self.decoder.stop()


class PcmInput:
    """Client audio -> 16 kHz float32: PCM16 LE frames of any size (an odd trailing byte waits for
    the next frame), resampled in a streaming way so the frame boundaries leave no trace."""

    def __init__(self, sample_rate: int):
        self.carry = b""
        self.resampler = None if sample_rate == SAMPLE_RATE else soxr.ResampleStream(
            sample_rate, SAMPLE_RATE, 1, dtype="float32")

    def feed(self, data: bytes) -> np.ndarray:
        data = self.carry + data
        cut = len(data) - len(data) % 2
        self.carry = data[cut:]
        pcm = np.frombuffer(data[:cut], dtype="<i2").astype(np.float32) / 32768.0
        return pcm if self.resampler is None else self.resampler.resample_chunk(pcm, last=False)

    def flush(self) -> np.ndarray:
        """The resampler's last samples (its filter holds a few back until the end)."""
        if self.resampler is None:
            return np.zeros(0, np.float32)
        return self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "", "0.0.0.0"-style names and host names: assume reachable from outside


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


class Session:
    """One client: protocol state, its resampler and its stream in the decoder."""

    def __init__(self, server: ASRServer, ws: Connection):
        self.server = server
        self.ws = ws
        self.id = uuid.uuid4().hex
        self.stream = None
        self.audio_in: PcmInput | None = None
        self.sample_rate = SAMPLE_RATE
        self.timestamps = True
        self.partial_interval_s = 0.0  # the start message's chunk_duration: audio seconds between partials
        self.finals: list[str] = []
        self.reader: asyncio.Task | None = None
        self.control = asyncio.Lock()  # start/stop/shutdown one at a time
        self.closing = False  # the server is shutting this session down: audio is ignored
        self.partial = ""  # the stream's latest partial (its unfinished utterance), for cut_off
        self.cut_due = False  # the drain's deadline is near: a stream still being decoded is ended now
        self.truncated = False  # cut_off ended the current stream before its audio was all decoded
        self.t0 = time.monotonic()
        self.audio_s = 0.0  # seconds of audio received over all of this session's streams
        self.streams = 0
        self.outcome = "client_closed"

    def log_end(self) -> None:
        """The session's one structured log line (never its audio or text)."""
        metrics.REQUESTS.labels("stream", "ok" if self.outcome in ("client_closed", "shutdown") else "error").inc()
        metrics.event("session", id=self.id, outcome=self.outcome, seconds=round(time.monotonic() - self.t0, 3),
                      audio_s=round(self.audio_s + (self.stream.samples_in / SAMPLE_RATE if self.stream else 0.0), 3),
                      streams=self.streams)

    async def send(self, msg: dict) -> None:
        await self.ws.send(json.dumps(msg, ensure_ascii=False))

    async def error(self, code: str, message: str) -> None:
        await self.send({"type": "error", "code": code, "message": message})

    async def run(self) -> None:
        await self.send({"type": "welcome", "message": "Parakeet real-time ASR: send {\"action\": \"start\"}",
                         "session_id": self.id})
        s = self.server.settings
        # Only valid messages count as activity: junk every few seconds must not hold a slot. A
        # session that never starts a stream gets the (shorter) start deadline.
        last_valid = time.monotonic()
        while True:
            limit = s.ws_idle_timeout_s if self.streams else min(s.ws_idle_timeout_s, s.ws_start_timeout_s)
            try:
                msg = await self.ws.recv(timeout=max(0.01, last_valid + limit - time.monotonic()))
            except TimeoutError:
                if self.closing or (self.stream is not None and not self.stream.closed
                                    and self.stream.pending_n >= self.server.decoder.frame_samples):
                    last_valid = time.monotonic()  # the server owes this client results: not idle
                    continue
                self.outcome = IDLE_TIMEOUT
                why = (f"no valid message for {limit:g} s" if self.streams
                       else f"no stream started within {limit:g} s")
                with contextlib.suppress(ConnectionClosed):
                    await self.error(IDLE_TIMEOUT, f"{why}, closing the session")
                    await self.ws.close(1000, "idle timeout")
                return
            except ConnectionClosed:
                if self.stream is not None and not self.closing:
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
            last_valid = time.monotonic()
            self.server.mark_active()

    async def on_text(self, raw: str) -> None:
        msg = parse_message(raw)
        action = msg.get("action")
        if action in ("start", "stop") and self.closing:
            return  # the server is flushing this session: its done is on the way
        if action == "start":
            async with self.control:
                await self.start(msg)
        elif action == "stop":
            async with self.control:
                await self.stop()
        else:
            raise ASRError(UNKNOWN_ACTION, f"unknown action {action!r}: use 'start' or 'stop'")

    async def start(self, msg: dict) -> None:
        if self.stream is not None:
            raise ASRError(ALREADY_STARTED, "send {\"action\": \"stop\"} before starting again")
        rate = msg.get("sample_rate", SAMPLE_RATE)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not MIN_RATE <= rate <= MAX_RATE:
            raise ASRError(INVALID_SAMPLE_RATE, f"sample_rate must be a number from {MIN_RATE} to {MAX_RATE}")
        partial_interval = msg.get("chunk_duration", 2.0)  # public name; it paces partials only
        if (isinstance(partial_interval, bool) or not isinstance(partial_interval, (int, float))
                or not 0.0 <= partial_interval <= 30.0):
            raise ASRError(INVALID_INPUT, "chunk_duration must be a number of seconds from 0 to 30")
        timestamps = msg.get("timestamps", True)
        if not isinstance(timestamps, bool):
            raise ASRError(INVALID_INPUT, "timestamps must be true or false")
        try:
            boosted = parse_hotwords(msg.get("hotwords"), msg.get("hotword_boost"))
        except HotwordError as exc:
            raise ASRError(INVALID_INPUT, str(exc)) from None
        unknown = set(msg) - {"action", "sample_rate", "chunk_duration", "timestamps", "hotwords", "hotword_boost"}
        if unknown:
            raise ASRError(INVALID_INPUT, f"unknown field(s) in start: {', '.join(sorted(unknown))}")
        # the tree is built off the event loop (cached per distinct list)
        boosting = await asyncio.to_thread(self.server.engine.hotword_trees.boosting, boosted) if boosted else None
        self.sample_rate, self.timestamps = int(rate), timestamps
        self.partial_interval_s = float(partial_interval)
        self.audio_in = PcmInput(self.sample_rate)
        self.finals = []
        decoder = self.server.decoder
        self.stream = decoder.open(boosting)
        self.streams += 1
        self.reader = asyncio.get_running_loop().create_task(self.relay_updates(self.stream))
        await self.send({"type": "started", "session_id": self.id, "sample_rate": self.sample_rate,
                         "chunk_duration": self.partial_interval_s, "timestamps": self.timestamps,
                         "step_duration": round(decoder.frame_samples / SAMPLE_RATE, 3),
                         "hotwords": len(boosted.phrases) if boosted else 0})

    async def on_audio(self, data: bytes) -> None:
        if self.closing:
            return  # shutting down: the stream is being flushed, later audio is not decoded
        if self.stream is None:
            raise ASRError(NOT_STARTED, "audio before start: send {\"action\": \"start\"} first")
        if self.stream.failed:
            return  # its error was sent once; audio until the client's stop is dropped quietly
        decoder, stream = self.server.decoder, self.stream
        limit = self.server.settings.max_audio_seconds
        if (stream.samples_in + len(data) // 2 * SAMPLE_RATE / self.sample_rate) / SAMPLE_RATE > limit:
            raise ASRError(AUDIO_TOO_LONG, f"a stream may carry at most {limit:g} s of audio; stop and start again")
        decoder.push(stream, self.audio_in.feed(data))
        # backpressure: a client sending faster than we decode waits here, and so (through TCP)
        # does its socket, instead of its audio piling up in memory
        while decoder.backlog(stream) > MAX_BACKLOG_S and not stream.closed:
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.stream is None:
            raise ASRError(NOT_STARTED, "nothing to stop: send {\"action\": \"start\"} first")
        self.server.decoder.push(self.stream, self.audio_in.flush())
        stream, reader = self.stream, self.reader
        self.server.decoder.finish(stream)
        if self.cut_due:
            self.cut_off()
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)  # it sends the remaining finals
        self.stream = self.reader = None
        self.audio_s += stream.samples_in / SAMPLE_RATE
        done = {"type": "done", "text": " ".join(t for t in self.finals if t),
                "duration": round(stream.samples_in / SAMPLE_RATE, 3)}
        if self.truncated:  # the drain's deadline came first: audio after the last final was not decoded
            done["truncated"] = True
            self.truncated = False
        await self.send(done)

    async def shutdown(self, reason: str, cut_at: float | None = None) -> None:
        """The server drains: an open stream is finished as if the client had sent stop (its
        last final, then ``done``), then the connection closes with 1001. ``cut_at``
        (time.monotonic()): if the stream's last step has not come by then, it is ended with
        what it has (``cut_off``) - also a stop the client sent before the drain."""
        self.closing = True
        self.outcome = "shutdown"
        timer = None
        if cut_at is not None:
            timer = asyncio.get_running_loop().call_later(max(0.0, cut_at - time.monotonic()), self.cut_off)
        try:
            async with self.control:
                if self.stream is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await self.stop()
        finally:
            if timer is not None:
                timer.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close(CLOSE_GOING_AWAY, reason)

    def cut_off(self) -> None:
        """The drain's deadline is near and the stream's last step has not come (the server is
        behind real time, e.g. a CPU shared with batch passes): stop decoding it and end it now,
        its current partial as its last final, so that the relay sends that final and ``stop``
        its ``done`` (``"truncated": true``) before the close."""
        self.cut_due = True
        stream = self.stream
        if stream is None or stream.closed:
            return  # no stream, or its last update is already queued (decoded, failed or aborted)
        lag = stream.pending_n / SAMPLE_RATE
        self.server.decoder.abort(stream)  # a step in flight delivers nothing for it any more
        self.truncated = True
        stream.updates.put_nowait(StreamUpdate(partial="", final=self.partial, end=stream.samples_done / SAMPLE_RATE,
                                               last=True, lag=lag))

    async def relay_updates(self, stream) -> None:
        """Send this stream's partials and finals, in order, until its last step."""
        try:
            await self._relay(stream)
        except ConnectionClosed:
            pass  # the connection loop sees it too and cleans up
        except Exception:  # noqa: BLE001 - a bug here must not leave the client waiting silently
            log.exception("session %s: sending results failed", self.id)
            self.server.decoder.abort(stream)
            stream.failed = True  # as a failed step: told once, audio dropped, done on stop
            with contextlib.suppress(Exception):
                await self.error(INTERNAL_ERROR, "sending results failed; send stop, then start again")

    async def _relay(self, stream) -> None:
        last_partial, last_sent_at = "", 0.0
        utterance_start = 0.0
        while True:
            update: StreamUpdate = await stream.updates.get()
            self.partial = update.partial
            if update.error:  # the decoder failed this stream: one error, then done on stop
                metrics.error(INTERNAL_ERROR)
                self.outcome = INTERNAL_ERROR
                await self.error(INTERNAL_ERROR, update.error)
                if update.fatal:  # the worker is going away: nothing more can be decoded here
                    await self.ws.close(CLOSE_INTERNAL_ERROR, "the worker failed; reconnect")
                return
            if update.final is not None:
                if update.final:
                    self.finals.append(update.final)
                    await self.send(self._message(update.final, True, update.words, utterance_start, update.end,
                                                  update.lag))
                utterance_start = update.words[-1].end if update.words else update.end
                last_partial, last_sent_at = "", update.end
            elif (update.partial and update.partial != last_partial
                  and update.end - last_sent_at >= self.partial_interval_s):
                await self.send(self._message(update.partial, False, [], utterance_start, update.end, update.lag))
                last_partial, last_sent_at = update.partial, update.end
            if update.last:
                return

    def _message(self, text: str, final: bool, words, start: float, end: float, lag: float = 0.0) -> dict:
        """``lag``: seconds of this stream's audio received but not yet decoded when the message
        was made (near 0 normally; growing means the server falls behind real time)."""
        if words:
            start, end = words[0].start, words[-1].end
        msg = {"type": "transcription", "text": text, "is_final": final, "start": round(start, 3),
               "end": round(max(end, start), 3), "lag": round(lag, 2)}
        if self.timestamps:
            msg["words"] = [{k: v for k, v in asdict(w).items() if v is not None} for w in words]
        return msg

    def abort(self) -> None:
        if self.stream is not None:
            self.server.decoder.abort(self.stream)
            self.stream = None
        if self.reader is not None:
            self.reader.cancel()
            self.reader = None


# ---------------------------------------------------------------------------------------------
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
    loading = asyncio.ensure_future(run_in(DECODE_POOL, Engine, settings))
    try:
        await asyncio.wait([loading, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            engine = loading.result()
            await server.attach_async(engine)
            log.info("engine warm: %s on %s", settings.model, engine.device)
            await stop.wait()
        # one second of the drain budget is kept for closing the listeners
        await server.drain(lifecycle.LIFECYCLE.remaining(settings.drain_timeout_s) - 1.0)
    finally:
        await server.close()  # its listeners too
    log.info("drained: exiting")


def main() -> None:
    s = Settings.from_env()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=s.ws_host)
    ap.add_argument("--port", type=int, default=s.ws_port)
    args = ap.parse_args()
    configure_logging(s)
    hardware.require_device(s.device)  # DEVICE=cuda without a usable GPU: stop, loudly
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_server(s, args.host, args.port))
    if lifecycle.LIFECYCLE.draining:
        # drained (not waiting for a model still loading, nor the teardown); non-zero after a lost GPU
        lifecycle.exit_now(lifecycle.LIFECYCLE.exit_code)


if __name__ == "__main__":
    main()
