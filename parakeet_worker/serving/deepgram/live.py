"""Deepgram's live WebSocket, ``/v1/listen``: binary audio in; ``Results`` (interim and final,
with ``speech_final`` at a pause and ``from_finalize`` after ``Finalize``), ``UtteranceEnd``,
``SpeechStarted`` and, at the end, ``Metadata`` out; control messages ``KeepAlive``, ``Finalize``,
``CloseStream`` and ``Configure`` (new key terms). Word times are seconds from the start of the
socket's audio, never restarting per utterance. The audio goes to the same streaming decoder as
every other dialect (serving/live.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import struct

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.errors import AUDIO_TOO_LONG, INTERNAL_ERROR, INVALID_AUDIO, UNKNOWN_ACTION, ASRError
from parakeet_worker.engine.hotwords import HotwordError, parse_hotwords
from parakeet_worker.runtime import metrics
from parakeet_worker.serving.connection import Connection, ConnectionClosed
from parakeet_worker.serving.deepgram import messages
from parakeet_worker.serving.deepgram.messages import ListenOptions
from parakeet_worker.serving.live import LiveAudio, LiveUpdate
from parakeet_worker.serving.live_session import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, LiveSession, parse_message

log = logging.getLogger("deepgram")


def wav_header(data: bytes) -> tuple[int, int] | None:
    """(sample rate, header length) of a PCM16 mono WAV header at the start of ``data``, or None
    when ``data`` does not start with one (then it is raw linear16). A header that is there but
    malformed, or not PCM16 mono, is ``invalid_audio``."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, rate = 12, None
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if kind == b"fmt ":
            if size < 16 or pos + 24 > len(data):
                raise ASRError(INVALID_AUDIO, "the WAV header's fmt chunk is truncated")
            fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[pos + 8 : pos + 24])
            if fmt != 1 or channels != 1 or bits != 16 or not 8000 <= rate <= 48000:
                raise ASRError(INVALID_AUDIO, "only PCM16 mono WAV at 8000-48000 Hz can be streamed (or raw linear16)")
        if kind == b"data":
            if rate is None:
                raise ASRError(INVALID_AUDIO, "the WAV header has no fmt chunk before its data")
            return rate, pos + 8
        pos += 8 + size + (size & 1)
    raise ASRError(INVALID_AUDIO, "the first frame must hold the whole WAV header, up to its data chunk")


class DeepgramLive(LiveSession):
    dialect = "deepgram_live"

    def __init__(self, server, ws: Connection, options: ListenOptions):
        super().__init__(server, ws)
        self.options = options
        self.request_id = self.id
        self.model_name = server.engine.model_name
        self.boosting = None
        self.digest = hashlib.sha256()
        self.reader: asyncio.Task | None = None
        self.ended = asyncio.Event()  # Metadata was sent (or the connection failed): nothing follows

    @classmethod
    async def refuse(cls, ws: Connection, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(messages.error(reason, "SERVICE_UNAVAILABLE")))
        await ws.close(code, reason)

    async def greet(self) -> None:
        self.boosting = await self.server.engine.boosting(self.options.hotwords)

    async def error(self, code: str, message: str) -> None:
        await self.send_json(messages.error(message, code.upper()))

    def _open(self, sample_rate: int) -> LiveAudio:
        live = self.open_live(sample_rate, self.boosting, self.options.endpointing_ms or -1)
        self.reader = asyncio.get_running_loop().create_task(self._relay(live))
        return live

    async def on_audio(self, data: bytes) -> None:
        if self.closing or self.ended.is_set() or (self.live is not None and self.live.finished):
            return  # after CloseStream (or during a drain) audio is not decoded
        if self.live is None:
            rate = self.options.sample_rate
            if self.options.encoding is None:
                header = wav_header(data)
                if header is not None:
                    rate, skip = header
                    data = data[skip:]
            self._open(rate)
        live = self.live
        if live.failed:
            return
        limit = self.server.settings.max_audio_seconds
        if (live.samples_in + len(data) // 2 * SAMPLE_RATE / live.sample_rate) / SAMPLE_RATE > limit:
            raise ASRError(AUDIO_TOO_LONG, f"a stream may carry at most {limit:g} s of audio")
        self.digest.update(data)
        live.push(data)
        await live.wait_for_room()

    async def on_text(self, raw: str) -> None:
        msg = parse_message(raw)
        kind = msg.get("type")
        if kind == "KeepAlive":
            return  # a valid message: the idle deadline starts again
        if kind == "Finalize":
            if self.live is None or not await self.live.finalize():
                # nothing heard since the last one: answer at once, as an empty final
                at = self.live.offset if self.live is not None else 0.0
                await self.send_json(self._results("", [], at, at, final=True, from_finalize=True))
        elif kind == "CloseStream":
            async with self.control:
                await self._close_stream(1000, "")
        elif kind == "Configure":
            await self._configure(msg)
        else:
            raise ASRError(
                UNKNOWN_ACTION,
                f"unknown message type {str(kind)[:40]!r}: use KeepAlive, Finalize, CloseStream or Configure",
            )

    async def _configure(self, msg: dict) -> None:
        terms = msg.get("keyterms") or []
        try:
            if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
                raise HotwordError("keyterms must be a list of strings")
            hotwords = parse_hotwords(terms, None) if terms else None
        except HotwordError as exc:
            await self.send_json(
                {
                    "type": "ConfigureFailure",
                    "request_id": self.request_id,
                    "code": "INVALID_REQUEST",
                    "description": str(exc),
                }
            )
            return
        self.boosting = await self.server.engine.boosting(hotwords)
        if self.live is not None:
            await self.live.finalize(boosting=self.boosting)  # new key terms from the next utterance
        await self.send_json({"type": "ConfigureSuccess", "request_id": self.request_id, "keyterms": list(terms)})

    async def _close_stream(self, code: int, reason: str) -> None:
        """Decode what is left, send its results and ``Metadata``, close with ``code``."""
        if self.live is not None:
            self.live.finish()
            if self.reader is not None:
                await asyncio.gather(self.reader, return_exceptions=True)
        await self._end(code, reason)

    async def _end(self, code: int, reason: str) -> None:
        if self.ended.is_set():
            return
        self.ended.set()
        duration = self.live.samples_in / SAMPLE_RATE if self.live is not None else 0.0
        with contextlib.suppress(ConnectionClosed):
            await self.send_json(messages.metadata(self.request_id, self.model_name, duration, self.digest.hexdigest()))
            await self.ws.close(code, reason)

    async def finish(self, reason: str) -> None:
        """As CloseStream: the last results and ``Metadata``, then the close."""
        await self._close_stream(CLOSE_GOING_AWAY, reason)

    def _results(self, text, words, start, end, *, final, speech_final=False, from_finalize=False) -> dict:
        return messages.results(
            self.request_id,
            self.model_name,
            text,
            words,
            start,
            end,
            is_final=final,
            speech_final=speech_final,
            from_finalize=from_finalize,
        )

    async def _relay(self, live: LiveAudio) -> None:
        if not await self.guard_relay(self._send_updates(live), live, "sending results failed"):
            self.ended.set()
            with contextlib.suppress(Exception):
                await self.ws.close(CLOSE_INTERNAL_ERROR, "internal error")

    async def _send_updates(self, live: LiveAudio) -> None:
        o = self.options
        start = 0.0  # where the current utterance's audio begins
        last_word_end, utterance_open = None, False  # for UtteranceEnd
        speaking = False
        last_interim = ""
        async for up in live.updates():
            up: LiveUpdate
            self.partial = up.partial
            if up.error:
                metrics.error(INTERNAL_ERROR)
                self.outcome = INTERNAL_ERROR
                await self.send_json(messages.error(up.error, "INTERNAL_ERROR"))
                self.ended.set()
                await self.ws.close(CLOSE_INTERNAL_ERROR, "decoding failed; reconnect")
                return
            if up.partial and not speaking:
                speaking = True
                if o.vad_events:
                    await self.send_json(messages.speech_started(start))
            if up.final is not None:
                end = up.words[-1].end if up.words else up.end
                if up.final or up.from_finalize:
                    pause = not up.from_finalize and not up.last
                    await self.send_json(
                        self._results(
                            up.final,
                            up.words,
                            start,
                            max(end, start),
                            final=True,
                            speech_final=pause,
                            from_finalize=up.from_finalize,
                        )
                    )
                if up.words:
                    last_word_end, utterance_open = up.words[-1].end, True
                start, speaking, last_interim = up.end, False, ""
            elif o.interim_results and up.partial and up.partial != last_interim:
                last_interim = up.partial
                await self.send_json(self._results(up.partial, [], start, up.end, final=False))
            gap_over = o.utterance_end_ms is not None and up.end - (last_word_end or 0.0) >= o.utterance_end_ms / 1000
            if utterance_open and not up.partial and (gap_over or up.last):
                utterance_open = False
                if o.utterance_end_ms is not None:
                    await self.send_json(messages.utterance_end(last_word_end))

    def abort(self) -> None:
        super().abort()
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
