"""The product's WebSocket protocol (docs/PROTOCOL.md): one connection is one ``Session``:
welcome -> start -> binary PCM16 audio -> partial and final ``transcription`` messages -> stop ->
done, and again. Every session's audio goes to the shared ``StreamDecoder`` (engine/streaming.py),
which decodes all sessions together in one batched step; ``ASRServer`` (asr_server.py) owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import asdict

import numpy as np
import soxr

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.errors import (
    ALREADY_STARTED,
    AUDIO_TOO_LONG,
    IDLE_TIMEOUT,
    INTERNAL_ERROR,
    INVALID_INPUT,
    INVALID_JSON,
    INVALID_SAMPLE_RATE,
    NOT_STARTED,
    UNKNOWN_ACTION,
    ASRError,
)
from parakeet_worker.engine.hotwords import HotwordError, parse_hotwords
from parakeet_worker.engine.streaming import StreamUpdate
from parakeet_worker.runtime import metrics
from parakeet_worker.serving.http_server import Connection, ConnectionClosed

log = logging.getLogger("websocket")

MIN_RATE, MAX_RATE = 8000, 48000
CLOSE_TRY_AGAIN_LATER = 1013  # over capacity / still loading
CLOSE_GOING_AWAY = 1001  # the server is shutting down (after the stream's last final and done)
CLOSE_INTERNAL_ERROR = 1011  # the worker cannot decode any more (a lost GPU): reconnect elsewhere
MAX_BACKLOG_S = 10.0  # undecoded audio per stream before we stop reading from its socket
CUT_MARGIN_S = 1.0  # a drain ends a stream still being decoded this long before its deadline (Session.cut_off)


class PcmInput:
    """Client audio -> 16 kHz float32: PCM16 LE frames of any size (an odd trailing byte waits for
    the next frame), resampled in a streaming way so the frame boundaries leave no trace."""

    def __init__(self, sample_rate: int):
        self.carry = b""
        self.resampler = (
            None if sample_rate == SAMPLE_RATE else soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32")
        )

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

    def __init__(self, server, ws: Connection):  # server: the ASRServer (asr_server.py)
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
        metrics.event(
            "session",
            id=self.id,
            outcome=self.outcome,
            seconds=round(time.monotonic() - self.t0, 3),
            audio_s=round(self.audio_s + (self.stream.samples_in / SAMPLE_RATE if self.stream else 0.0), 3),
            streams=self.streams,
        )

    async def send(self, msg: dict) -> None:
        await self.ws.send(json.dumps(msg, ensure_ascii=False))

    async def error(self, code: str, message: str) -> None:
        await self.send({"type": "error", "code": code, "message": message})

    async def run(self) -> None:
        await self.send(
            {"type": "welcome", "message": 'Parakeet real-time ASR: send {"action": "start"}', "session_id": self.id}
        )
        s = self.server.settings
        # Only valid messages count as activity: junk every few seconds must not hold a slot. A
        # session that never starts a stream gets the (shorter) start deadline.
        last_valid = time.monotonic()
        while True:
            limit = s.ws_idle_timeout_s if self.streams else min(s.ws_idle_timeout_s, s.ws_start_timeout_s)
            try:
                msg = await self.ws.recv(timeout=max(0.01, last_valid + limit - time.monotonic()))
            except TimeoutError:
                if self.closing or (
                    self.stream is not None
                    and not self.stream.closed
                    and self.stream.pending_n >= self.server.decoder.frame_samples
                ):
                    last_valid = time.monotonic()  # the server owes this client results: not idle
                    continue
                self.outcome = IDLE_TIMEOUT
                why = f"no valid message for {limit:g} s" if self.streams else f"no stream started within {limit:g} s"
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
            raise ASRError(ALREADY_STARTED, 'send {"action": "stop"} before starting again')
        rate = msg.get("sample_rate", SAMPLE_RATE)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not MIN_RATE <= rate <= MAX_RATE:
            raise ASRError(INVALID_SAMPLE_RATE, f"sample_rate must be a number from {MIN_RATE} to {MAX_RATE}")
        # audio seconds between partials: "partial_interval", or its older name "chunk_duration"
        key = "partial_interval" if "partial_interval" in msg else "chunk_duration"
        if key == "partial_interval" and "chunk_duration" in msg:
            raise ASRError(INVALID_INPUT, "send partial_interval or chunk_duration (its older name), not both")
        partial_interval = msg.get(key, 2.0)
        if (
            isinstance(partial_interval, bool)
            or not isinstance(partial_interval, (int, float))
            or not 0.0 <= partial_interval <= 30.0
        ):
            raise ASRError(INVALID_INPUT, f"{key} must be a number of seconds from 0 to 30")
        timestamps = msg.get("timestamps", True)
        if not isinstance(timestamps, bool):
            raise ASRError(INVALID_INPUT, "timestamps must be true or false")
        try:
            boosted = parse_hotwords(msg.get("hotwords"), msg.get("hotword_boost"))
        except HotwordError as exc:
            raise ASRError(INVALID_INPUT, str(exc)) from None
        unknown = set(msg) - {
            "action",
            "sample_rate",
            "partial_interval",
            "chunk_duration",
            "timestamps",
            "hotwords",
            "hotword_boost",
        }
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
        await self.send(
            {
                "type": "started",
                "session_id": self.id,
                "sample_rate": self.sample_rate,
                "partial_interval": self.partial_interval_s,
                "chunk_duration": self.partial_interval_s,  # the older name, for older clients
                "timestamps": self.timestamps,
                "step_duration": round(decoder.frame_samples / SAMPLE_RATE, 3),
                "hotwords": len(boosted.phrases) if boosted else 0,
            }
        )

    async def on_audio(self, data: bytes) -> None:
        if self.closing:
            return  # shutting down: the stream is being flushed, later audio is not decoded
        if self.stream is None:
            raise ASRError(NOT_STARTED, 'audio before start: send {"action": "start"} first')
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
            raise ASRError(NOT_STARTED, 'nothing to stop: send {"action": "start"} first')
        self.server.decoder.push(self.stream, self.audio_in.flush())
        stream, reader = self.stream, self.reader
        self.server.decoder.finish(stream)
        if self.cut_due:
            self.cut_off()
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)  # it sends the remaining finals
        self.stream = self.reader = None
        self.audio_s += stream.samples_in / SAMPLE_RATE
        done = {
            "type": "done",
            "text": " ".join(t for t in self.finals if t),
            "duration": round(stream.samples_in / SAMPLE_RATE, 3),
        }
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
        stream.updates.put_nowait(
            StreamUpdate(partial="", final=self.partial, end=stream.samples_done / SAMPLE_RATE, last=True, lag=lag)
        )

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
                    await self.send(
                        self._message(update.final, True, update.words, utterance_start, update.end, update.lag)
                    )
                utterance_start = update.words[-1].end if update.words else update.end
                last_partial, last_sent_at = "", update.end
            elif (
                update.partial
                and update.partial != last_partial
                and update.end - last_sent_at >= self.partial_interval_s
            ):
                await self.send(self._message(update.partial, False, [], utterance_start, update.end, update.lag))
                last_partial, last_sent_at = update.partial, update.end
            if update.last:
                return

    def _message(self, text: str, final: bool, words, start: float, end: float, lag: float = 0.0) -> dict:
        """``lag``: seconds of this stream's audio received but not yet decoded when the message
        was made (near 0 normally; growing means the server falls behind real time)."""
        if words:
            start, end = words[0].start, words[-1].end
        msg = {
            "type": "transcription",
            "text": text,
            "is_final": final,
            "start": round(start, 3),
            "end": round(max(end, start), 3),
            "lag": round(lag, 2),
        }
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
