"""OpenAI's Realtime transcription over WebSocket, ``/v1/realtime?intent=transcription``.

Client events: ``session.update`` (or the older ``transcription_session.update``) with a
transcription session - input PCM16 at 24 kHz (16 kHz and other rates as an extension), turn
detection ``server_vad`` (its ``silence_duration_ms`` is the end-of-utterance silence) or null (the
client commits) - and ``input_audio_buffer.append`` / ``commit`` / ``clear``. Server events:
``session.created`` / ``session.updated``, ``input_audio_buffer.speech_started`` / ``speech_stopped``
/ ``committed`` / ``cleared``, ``conversation.item.input_audio_transcription.delta`` (append-only
within an item) and ``.completed``, and ``error`` in OpenAI's shape. Keywords and the prompt's
comma-separated terms become hotwords. The audio goes to the same streaming decoder as every
other dialect (serving/live.py).

With server VAD an item is one utterance: deltas come while it is spoken, then speech_stopped,
committed, the last delta and completed. With ``turn_detection: null`` nothing is transcribed
before ``commit``; the committed audio is one item.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.errors import INTERNAL_ERROR
from parakeet_worker.runtime import metrics
from parakeet_worker.serving.connection import Connection, ConnectionClosed
from parakeet_worker.serving.live import AppendOnly, LiveAudio
from parakeet_worker.serving.live_session import CLOSE_INTERNAL_ERROR, LiveSession, parse_message
from parakeet_worker.serving.openai.realtime_config import RealtimeError, TranscriptionConfig, parse_session

log = logging.getLogger("openai_realtime")
MAX_UNCOMMITTED_S = 300.0  # turn_detection null: audio appended and not yet committed, per session


class RealtimeTranscription(LiveSession):
    dialect = "openai_realtime"

    def __init__(self, server, ws: Connection):
        super().__init__(server, ws)
        self.config = TranscriptionConfig()
        self.boosting = None
        self.model_name = server.engine.model_name
        self._events = itertools.count(1)
        self._items = itertools.count(1)
        self.previous_item: str | None = None
        self.buffer = bytearray()  # turn_detection null: audio appended since the last commit
        self.committed_s = 0.0  # ... and the seconds committed before it (MAX_AUDIO_SECONDS counts both)
        self.reader: asyncio.Task | None = None
        self.client_event: str | None = None  # the event_id of the client event being handled

    # ---- shapes
    def _event(self, kind: str, **fields) -> dict:
        return {"type": kind, "event_id": f"event_{next(self._events)}", **fields}

    def session_object(self) -> dict:
        c = self.config
        transcription = {"model": self.model_name, "language": c.language, "prompt": c.prompt}
        if c.keywords:
            transcription["keywords"] = list(c.keywords)
        audio_in = {
            "format": {"type": "audio/pcm", "rate": c.rate},
            "transcription": transcription,
            "turn_detection": c.turn_detection,
            "noise_reduction": None,
        }
        return {
            "type": "transcription",
            "id": f"sess_{self.id}",
            "object": "realtime.transcription_session",
            "audio": {"input": audio_in},
            "include": [],
        }

    @classmethod
    async def refuse(cls, ws: Connection, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(
                json.dumps(
                    {
                        "type": "error",
                        "event_id": "event_0",
                        "error": {
                            "type": "server_error",
                            "code": "unavailable",
                            "message": reason,
                            "param": None,
                            "event_id": None,
                        },
                    }
                )
            )
        await ws.close(code, reason)

    async def greet(self) -> None:
        await self.send_json(self._event("session.created", session=self.session_object()))

    async def error(self, code: str, message: str, param: str | None = None) -> None:
        kind = "server_error" if code == INTERNAL_ERROR else "invalid_request_error"
        await self.send_json(
            self._event(
                "error",
                error={"type": kind, "code": code, "message": message, "param": param, "event_id": self.client_event},
            )
        )

    # ---- client events
    async def on_text(self, raw: str) -> None:
        msg = parse_message(raw)
        kind = msg.get("type")
        self.client_event = msg.get("event_id") if isinstance(msg.get("event_id"), str) else None
        try:
            if kind in ("session.update", "transcription_session.update"):
                await self._update(msg.get("session"), kind)
            elif kind == "input_audio_buffer.append":
                await self._append(msg.get("audio"))
            elif kind == "input_audio_buffer.commit":
                async with self.control:
                    await self._commit()
            elif kind == "input_audio_buffer.clear":
                await self._clear()
            else:
                raise RealtimeError(
                    "unknown_event", f"unsupported event type {str(kind)[:60]!r} for a transcription session", "type"
                )
        except RealtimeError as exc:
            metrics.error(exc.code)
            await self.error(exc.code, exc.message, exc.param)

    async def on_audio(self, data: bytes) -> None:
        raise RealtimeError("invalid_event", "send audio as input_audio_buffer.append events (base64 PCM16)")

    async def _update(self, session, kind: str) -> None:
        config = parse_session(session, kind, self.config)
        self.boosting = await self.server.engine.boosting(config.hotwords)
        self.config = config
        if self.live is not None:  # the new set-up applies from the next item
            async with self.control:
                await self._end_live()
        reply = "transcription_session.updated" if kind == "transcription_session.update" else "session.updated"
        await self.send_json(self._event(reply, session=self.session_object()))

    def _decode_append(self, audio) -> bytes:
        if not isinstance(audio, str):
            raise RealtimeError("invalid_value", "audio must be base64-encoded PCM16", "audio")
        try:
            return base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise RealtimeError("invalid_value", "audio is not valid base64", "audio") from None

    def _too_long(self, seconds: float) -> None:
        limit = self.server.settings.max_audio_seconds
        if seconds > limit:
            raise RealtimeError("audio_too_long", f"a session may carry at most {limit:g} s of audio", "audio")

    async def _append(self, audio) -> None:
        data = self._decode_append(audio)
        if self.closing:
            return
        if self.config.turn_detection is None:  # the client commits: keep it until then
            buffered = (len(self.buffer) + len(data)) / 2 / self.config.rate
            if buffered > MAX_UNCOMMITTED_S:  # held in memory until the commit: bounded per session
                raise RealtimeError(
                    "input_audio_buffer_full",
                    f"the input audio buffer holds at most "
                    f"{MAX_UNCOMMITTED_S:g} s before a commit; commit, or use server_vad",
                    "audio",
                )
            self._too_long(self.committed_s + buffered)
            self.buffer += data
            return
        live = self.live or self._open_vad()
        if live.failed:
            return
        self._too_long(live.samples_in / SAMPLE_RATE + len(data) / 2 / self.config.rate)
        live.push(data)
        await live.wait_for_room()

    def _open_vad(self) -> LiveAudio:
        live = self.open_live(self.config.rate, self.boosting, self.config.turn_detection["silence_duration_ms"])
        self.reader = asyncio.get_running_loop().create_task(self._relay(live, vad=True))
        return live

    async def _commit(self) -> None:
        if self.config.turn_detection is not None:  # server VAD: the utterance so far is one item now
            if self.live is None or not await self.live.finalize():
                raise RealtimeError("input_audio_buffer_commit_empty", "nothing was heard since the last commit", None)
            return
        if len(self.buffer) < 2:
            raise RealtimeError("input_audio_buffer_commit_empty", "the input audio buffer is empty", None)
        data, self.buffer = bytes(self.buffer), bytearray()
        self.committed_s += len(data) / 2 / self.config.rate
        item = self._new_item()
        await self.send_json(
            self._event("input_audio_buffer.committed", item_id=item, previous_item_id=self.previous_item)
        )
        self.previous_item = item
        live = self.open_live(self.config.rate, self.boosting, None)
        live.push(data)
        live.finish()
        await self._relay(live, vad=False, item=item)  # this item's deltas and completion, in order
        self.close_live()

    async def _clear(self) -> None:
        self.buffer = bytearray()
        if self.live is not None and self.config.turn_detection is not None:
            async with self.control:  # what was said so far is dropped: no item for it
                self.live.abort()
                if self.reader is not None:
                    self.reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self.reader
                self.reader = None
                self.close_live()
        await self.send_json(self._event("input_audio_buffer.cleared"))

    def _new_item(self) -> str:
        return f"item_{self.id[:12]}_{next(self._items)}"

    async def _end_live(self) -> None:
        """Finish the server-VAD audio: its last utterance is completed, nothing follows."""
        live, reader = self.live, self.reader
        if live is None:
            return
        live.finish()
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        self.reader = None
        self.close_live()

    async def finish(self, reason: str) -> None:
        """The utterance being spoken is completed; a commit in progress completes first
        (``control``); audio appended and not committed is dropped, as at any close."""
        await self._end_live()

    # ---- results
    async def _relay(self, live: LiveAudio, vad: bool, item: str | None = None) -> None:
        await self.guard_relay(self._send_items(live, vad, item), live, "sending results failed")

    async def _send_items(self, live: LiveAudio, vad: bool, item: str | None) -> None:
        text = AppendOnly()
        utterance_start = 0.0
        async for up in live.updates():
            self.partial = up.partial
            if up.error:
                metrics.error(INTERNAL_ERROR)
                self.outcome = INTERNAL_ERROR
                await self.error(INTERNAL_ERROR, up.error)
                if up.fatal:
                    await self.ws.close(CLOSE_INTERNAL_ERROR, "the worker failed; reconnect")
                return
            if vad and item is None and up.partial:
                item = self._new_item()
                await self.send_json(
                    self._event(
                        "input_audio_buffer.speech_started", item_id=item, audio_start_ms=int(utterance_start * 1000)
                    )
                )
            if up.final is None:
                delta = text.partial(up.partial) if item is not None else ""
                if delta:
                    await self._delta(item, delta)
                continue
            if vad:
                if item is None and up.final:  # an utterance too short for a partial
                    item = self._new_item()
                    await self.send_json(
                        self._event(
                            "input_audio_buffer.speech_started",
                            item_id=item,
                            audio_start_ms=int(utterance_start * 1000),
                        )
                    )
                if item is not None:
                    end_ms = int((up.words[-1].end if up.words else up.end) * 1000)
                    await self.send_json(
                        self._event("input_audio_buffer.speech_stopped", item_id=item, audio_end_ms=end_ms)
                    )
                    await self.send_json(
                        self._event("input_audio_buffer.committed", item_id=item, previous_item_id=self.previous_item)
                    )
                    self.previous_item = item
                    delta = text.final(up.final)
                    if delta:
                        await self._delta(item, delta)
                    await self._completed(item, text.text, up.end - utterance_start)
                item, text, utterance_start = None, AppendOnly(), up.end
            else:  # one committed buffer is one item, whatever pauses it holds
                delta = text.final(up.final) if up.final else ""
                if delta:
                    await self._delta(item, delta)
                if up.last:
                    await self._completed(item, text.text, up.end)

    async def _delta(self, item: str, delta: str) -> None:
        await self.send_json(
            self._event("conversation.item.input_audio_transcription.delta", item_id=item, content_index=0, delta=delta)
        )

    async def _completed(self, item: str, transcript: str, seconds: float) -> None:
        await self.send_json(
            self._event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item,
                content_index=0,
                transcript=transcript,
                usage={"type": "duration", "seconds": round(max(seconds, 0.0), 3)},
            )
        )

    def abort(self) -> None:
        super().abort()
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
