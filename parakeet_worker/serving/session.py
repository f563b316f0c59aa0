"""The product's own WebSocket protocol (docs/PROTOCOL.md): one connection is one ``Session``:
welcome -> start -> binary PCM16 audio -> partial and final ``transcription`` messages -> stop ->
done, and again. Mid-stream a client may ``finalize`` (what was heard becomes final now),
``configure`` (new hotwords, partial interval or latency) and ``keepalive``. The audio goes through
a ``LiveAudio`` (live.py) into the streaming decoder all dialects share.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.errors import (
    ALREADY_STARTED,
    AUDIO_TOO_LONG,
    INTERNAL_ERROR,
    INVALID_INPUT,
    INVALID_SAMPLE_RATE,
    NOT_STARTED,
    UNKNOWN_ACTION,
    ASRError,
)
from parakeet_worker.engine.hotwords import HotwordError, parse_hotwords
from parakeet_worker.runtime import metrics
from parakeet_worker.serving.live import LiveAudio, LiveUpdate
from parakeet_worker.serving.live_session import (
    CLOSE_INTERNAL_ERROR,
    LiveSession,
    parse_message,
)

log = logging.getLogger("websocket")

MIN_RATE, MAX_RATE = 8000, 48000
# end-of-utterance silence (ms) per latency setting; None: the server's STREAM_EOU_MS. Shorter
# silence gives finals sooner and splits utterances at shorter pauses. A pause longer than the
# decoder's step plus look-ahead (0.96 s by default) ends an utterance whatever the setting: no
# token falls in the decoded window (docs/PROTOCOL.md).
LATENCY_EOU_MS = {"low": 400, "balanced": None, "accurate": 1600}
START_FIELDS = {"action", "sample_rate", "partial_interval", "chunk_duration", "timestamps", "hotwords"}
START_FIELDS |= {"hotword_boost", "latency"}
CONFIGURE_FIELDS = {"action", "partial_interval", "hotwords", "hotword_boost", "latency"}


def _partial_interval(msg: dict, default: float) -> float:
    """Audio seconds between partials: "partial_interval", or its older name "chunk_duration"."""
    key = "partial_interval" if "partial_interval" in msg else "chunk_duration"
    if key == "partial_interval" and "chunk_duration" in msg:
        raise ASRError(INVALID_INPUT, "send partial_interval or chunk_duration (its older name), not both")
    value = msg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 30.0:
        raise ASRError(INVALID_INPUT, f"{key} must be a number of seconds from 0 to 30")
    return float(value)


def _latency(msg: dict, default: str) -> str:
    value = msg.get("latency", default)
    if value not in LATENCY_EOU_MS:
        raise ASRError(INVALID_INPUT, "latency must be one of " + ", ".join(LATENCY_EOU_MS))
    return value


class Session(LiveSession):
    """One client of the product's protocol: its settings, its stream, its relay task."""

    dialect = "stream"

    def __init__(self, server, ws):
        super().__init__(server, ws)
        self.sample_rate = SAMPLE_RATE
        self.timestamps = True
        self.partial_interval_s = 0.0  # audio seconds between partials
        self.latency = "balanced"
        self.finals: list[str] = []
        self.reader: asyncio.Task | None = None
        self.cut_due = False  # the drain's deadline is near: a stream still being decoded is ended now
        self.truncated = False  # cut_off ended the current stream before its audio was all decoded

    async def greet(self) -> None:
        await self.send_json(
            {"type": "welcome", "message": 'Parakeet real-time ASR: send {"action": "start"}', "session_id": self.id}
        )

    async def error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})

    async def on_text(self, raw: str) -> None:
        msg = parse_message(raw)
        action = msg.get("action")
        if action == "keepalive":
            return  # a valid message: the idle deadline starts again
        if self.closing and action in ("start", "stop", "finalize", "configure"):
            return  # the server is flushing this session: its done is on the way
        handlers = {"start": self.start, "stop": self.stop, "finalize": self.finalize, "configure": self.configure}
        if action not in handlers:
            actions = "start, stop, finalize, configure, keepalive"
            raise ASRError(UNKNOWN_ACTION, f"unknown action {action!r}: use {actions}")
        async with self.control:
            await (handlers[action](msg) if action in ("start", "configure") else handlers[action]())

    async def _boosting(self, msg: dict):
        """The message's hotwords as a boosting tree (built off the event loop, cached per list)."""
        try:
            boosted = parse_hotwords(msg.get("hotwords"), msg.get("hotword_boost"))
        except HotwordError as exc:
            raise ASRError(INVALID_INPUT, str(exc)) from None
        return await self.server.engine.boosting(boosted), len(boosted.phrases) if boosted else 0

    def _eou_ms(self) -> int | None:
        return LATENCY_EOU_MS[self.latency]

    async def start(self, msg: dict) -> None:
        if self.live is not None:
            raise ASRError(ALREADY_STARTED, 'send {"action": "stop"} before starting again')
        rate = msg.get("sample_rate", SAMPLE_RATE)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not MIN_RATE <= rate <= MAX_RATE:
            raise ASRError(INVALID_SAMPLE_RATE, f"sample_rate must be a number from {MIN_RATE} to {MAX_RATE}")
        partial_interval = _partial_interval(msg, 2.0)
        timestamps = msg.get("timestamps", True)
        if not isinstance(timestamps, bool):
            raise ASRError(INVALID_INPUT, "timestamps must be true or false")
        latency = _latency(msg, "balanced")
        unknown = set(msg) - START_FIELDS
        if unknown:
            raise ASRError(INVALID_INPUT, f"unknown field(s) in start: {', '.join(sorted(unknown))}")
        boosting, n_hotwords = await self._boosting(msg)
        self.sample_rate, self.timestamps, self.latency = int(rate), timestamps, latency
        self.partial_interval_s = partial_interval
        self.finals = []
        live = self.open_live(self.sample_rate, boosting, self._eou_ms())
        self.reader = asyncio.get_running_loop().create_task(self.relay_updates(live))
        await self.send_json(
            {
                "type": "started",
                "session_id": self.id,
                "sample_rate": self.sample_rate,
                "partial_interval": self.partial_interval_s,
                "chunk_duration": self.partial_interval_s,  # the older name, for older clients
                "timestamps": self.timestamps,
                "latency": self.latency,
                "step_duration": round(self.server.decoder.frame_samples / SAMPLE_RATE, 3),
                "hotwords": n_hotwords,
            }
        )

    async def configure(self, msg: dict) -> None:
        """Mid-stream: a new partial interval applies at once; new hotwords or latency apply from
        the next utterance (the current one is finalized, as by ``finalize``)."""
        if self.live is None:
            raise ASRError(NOT_STARTED, 'nothing to configure: send {"action": "start"} first')
        unknown = set(msg) - CONFIGURE_FIELDS
        if unknown:
            raise ASRError(INVALID_INPUT, f"unknown field(s) in configure: {', '.join(sorted(unknown))}")
        partial_interval = _partial_interval(msg, self.partial_interval_s)
        latency = _latency(msg, self.latency)
        reply = {"type": "configured", "partial_interval": partial_interval, "latency": latency}
        if "hotwords" in msg or "hotword_boost" in msg or latency != self.latency:
            boosting, n_hotwords = await self._boosting(msg) if "hotwords" in msg else (self.live.boosting, None)
            self.latency = latency
            await self.live.finalize(boosting=boosting, eou_ms=self._eou_ms())
            if n_hotwords is not None:
                reply["hotwords"] = n_hotwords
        self.partial_interval_s = partial_interval
        await self.send_json(reply)

    async def finalize(self) -> None:
        """What was heard becomes final now (``from_finalize: true``); the stream goes on."""
        if self.live is None:
            raise ASRError(NOT_STARTED, 'nothing to finalize: send {"action": "start"} first')
        await self.live.finalize()

    async def on_audio(self, data: bytes) -> None:
        if self.closing:
            return  # shutting down: the stream is being flushed, later audio is not decoded
        live = self.live
        if live is None:
            raise ASRError(NOT_STARTED, 'audio before start: send {"action": "start"} first')
        if live.failed:
            return  # its error was sent once; audio until the client's stop is dropped quietly
        limit = self.server.settings.max_audio_seconds
        if (live.samples_in + len(data) // 2 * SAMPLE_RATE / self.sample_rate) / SAMPLE_RATE > limit:
            raise ASRError(AUDIO_TOO_LONG, f"a stream may carry at most {limit:g} s of audio; stop and start again")
        live.push(data)
        await live.wait_for_room()

    async def stop(self) -> None:
        live, reader = self.live, self.reader
        if live is None:
            raise ASRError(NOT_STARTED, 'nothing to stop: send {"action": "start"} first')
        live.finish()
        if self.cut_due:
            self.cut_off()
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)  # it sends the remaining finals
        self.reader = None
        duration = live.samples_in / SAMPLE_RATE
        self.close_live()
        done = {"type": "done", "text": " ".join(t for t in self.finals if t), "duration": round(duration, 3)}
        if self.truncated:  # the drain's deadline came first: audio after the last final was not decoded
            done["truncated"] = True
            self.truncated = False
        await self.send_json(done)

    async def finish(self, reason: str) -> None:
        """An open stream ends as if the client had sent stop: its last final, then ``done``."""
        if self.live is not None:
            await self.stop()

    def cut_off(self) -> bool:
        """The drain's deadline is near: the stream ends now, and ``stop``'s ``done`` says
        ``"truncated": true`` (a stream started later is cut off at its stop)."""
        self.cut_due = True
        if super().cut_off():
            self.truncated = True
            return True
        return False

    async def relay_updates(self, live: LiveAudio) -> None:
        """Send this stream's partials and finals, in order, until its last update (a failure here
        is told once; audio is then dropped and ``stop`` answers ``done``)."""
        await self.guard_relay(self._relay(live), live, "sending results failed; send stop, then start again")

    async def _relay(self, live: LiveAudio) -> None:
        last_partial, last_sent_at = "", 0.0
        utterance_start = 0.0
        async for update in live.updates():
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
                    await self.send_json(self._message(update, update.final, True, utterance_start))
                utterance_start = update.words[-1].end if update.words else update.end
                last_partial, last_sent_at = "", update.end
            elif (
                update.partial
                and update.partial != last_partial
                and update.end - last_sent_at >= self.partial_interval_s
            ):
                await self.send_json(self._message(update, update.partial, False, utterance_start))
                last_partial, last_sent_at = update.partial, update.end

    def _message(self, update: LiveUpdate, text: str, final: bool, start: float) -> dict:
        """``lag``: seconds of this stream's audio received but not yet decoded when the message
        was made (near 0 normally; growing means the server falls behind real time)."""
        words = update.words if final else []
        end = update.end
        if words:
            start, end = words[0].start, words[-1].end
        msg = {
            "type": "transcription",
            "text": text,
            "is_final": final,
            "start": round(start, 3),
            "end": round(max(end, start), 3),
            "lag": round(update.lag, 2),
        }
        if final and update.from_finalize:
            msg["from_finalize"] = True
        if self.timestamps:
            msg["words"] = [{k: v for k, v in asdict(w).items() if v is not None} for w in words]
        return msg

    def abort(self) -> None:
        super().abort()
        if self.reader is not None:
            self.reader.cancel()
            self.reader = None
