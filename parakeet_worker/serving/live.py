"""One connection's live audio on the shared streaming decoder, whatever the dialect.

Every live protocol (the product's own WebSocket, Deepgram's ``/v1/listen``, OpenAI's
``/v1/realtime``, and the OpenAI file route's streaming) sends audio through a ``LiveAudio`` and
reads ``LiveUpdate`` s back; only the message shapes differ. Data flows one way: PCM16 bytes at the
client's rate -> ``PcmInput`` (16 kHz float32) -> a stream of the ``StreamDecoder`` (one batched step
for every stream of every dialect) -> ``LiveUpdate`` s with times in seconds from the start of this
connection's audio.

``finalize()`` makes what was heard final now without ending the connection: the decoder stream
is finished (its last final comes with ``from_finalize``) and the next audio goes to a fresh one,
its times continuing where the audio is. ``reconfigure()`` does the same with new hotwords or a new
end-of-utterance silence (both are fixed for a decoder stream's life).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import soxr

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.engine.hotwords import Boosting
from parakeet_worker.engine.streaming import Stream, StreamDecoder, StreamUpdate
from parakeet_worker.engine.transcript import Word

MAX_BACKLOG_S = 10.0  # undecoded audio per connection before we stop reading from its socket
MAX_FINALIZING = 4  # decoder streams of one connection being finished at once (finalize storms wait)


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


@dataclass
class LiveUpdate:
    """A ``StreamUpdate`` on the connection's time line."""

    partial: str  # the current utterance so far (replaces the previous partial)
    final: str | None = None  # an utterance that just ended (never changes afterwards); "" = ended empty
    words: list[Word] = field(default_factory=list)  # the final's words, seconds from the connection's start
    end: float = 0.0  # seconds of the connection's audio decoded so far
    lag: float = 0.0  # seconds received but not yet decoded
    from_finalize: bool = False  # this final was forced by finalize() (not a pause in the speech)
    last: bool = False  # nothing follows: the audio ended (finish), was cut off, or decoding failed
    error: str = ""  # decoding failed (with ``last``): what to tell the client, once
    fatal: bool = False  # ... because the worker lost its GPU


class LiveAudio:
    """A connection's audio in, its updates out (``updates()``). Create inside the event loop."""

    def __init__(
        self, decoder: StreamDecoder, sample_rate: int, boosting: Boosting | None = None, eou_ms: int | None = None
    ):
        self.decoder = decoder
        self.sample_rate = sample_rate
        self.boosting, self.eou_ms = boosting, eou_ms
        self.audio_in = PcmInput(sample_rate)
        self.offset = 0.0  # seconds of audio before the current decoder stream
        self.stream: Stream = decoder.open(boosting, eou_ms)
        # decoder streams in order, with their offset and whether finalize() ended them
        self._streams: asyncio.Queue[tuple[Stream, float]] = asyncio.Queue()
        self._streams.put_nowait((self.stream, 0.0))
        self._finalized: set[int] = set()
        self._finishing: set[int] = set()  # finalized streams whose last update has not come yet
        self.finished = False

    # ---- audio in
    @property
    def samples_in(self) -> int:
        """16 kHz samples received so far, over every decoder stream of this connection."""
        return int(round(self.offset * SAMPLE_RATE)) + self.stream.samples_in

    @property
    def failed(self) -> bool:
        return self.stream.failed

    @property
    def pending_samples(self) -> int:
        """Samples received and not yet decoded (the server owes this client results)."""
        return self.stream.pending_n

    @property
    def closed(self) -> bool:
        return self.stream.closed

    def push(self, data: bytes) -> None:
        """PCM16 LE bytes at the connection's sample rate (dropped after finish or a failure)."""
        if not self.finished and not self.stream.failed:
            self.decoder.push(self.stream, self.audio_in.feed(data))

    async def wait_for_room(self) -> None:
        """Backpressure: a client sending faster than we decode waits here, and so (through TCP)
        does its socket, instead of its audio piling up in memory."""
        while self.decoder.backlog(self.stream) > MAX_BACKLOG_S and not self.stream.closed:
            await asyncio.sleep(0.05)

    async def finalize(self, boosting: Boosting | None | bool = False, eou_ms: int | None | bool = False) -> bool:
        """Make what was heard final now; later audio goes on in a fresh decoder stream (with new
        hotwords or end-of-utterance silence, when given). False when there was nothing to do:
        after finish or a failure, or nothing heard since the last finalize (and no new set-up).
        At most MAX_FINALIZING streams of a connection are being finished at once: a client
        finalizing faster waits here (and, through TCP, its socket), as for audio."""
        if self.finished or self.stream.failed:
            return False
        if self.stream.samples_in == 0 and boosting is False and eou_ms is False:
            return False
        while len(self._finishing) >= MAX_FINALIZING and not self.finished:
            await asyncio.sleep(0.02)
        if self.finished or self.stream.failed:
            return False
        if boosting is not False:
            self.boosting = boosting
        if eou_ms is not False:
            self.eou_ms = eou_ms
        old = self.stream
        self.decoder.push(old, self.audio_in.flush())
        self.audio_in = PcmInput(self.sample_rate)
        self._finalized.add(old.id)
        self._finishing.add(old.id)
        self.decoder.finish(old)
        self.offset += old.samples_in / SAMPLE_RATE
        self.stream = self.decoder.open(self.boosting, self.eou_ms)
        self._streams.put_nowait((self.stream, self.offset))
        return True

    def finish(self) -> None:
        """No more audio: decode what is left; the last update has ``last``."""
        if not self.finished:
            self.finished = True
            self.decoder.push(self.stream, self.audio_in.flush())
            self.decoder.finish(self.stream)

    def cut_off(self, partial: str) -> None:
        """End now with what was heard (a drain's deadline): the current partial becomes the last
        final, and the decoder stops decoding this connection."""
        self.finished = True
        stream = self.stream
        if stream.closed:
            return  # its last update is already queued (decoded, failed or aborted)
        lag = stream.pending_n / SAMPLE_RATE
        self.decoder.abort(stream)  # a step in flight delivers nothing for it any more
        stream.updates.put_nowait(
            StreamUpdate(partial="", final=partial, end=stream.samples_done / SAMPLE_RATE, last=True, lag=lag)
        )

    def abort(self) -> None:
        """The client is gone: free the decoder's state at once."""
        self.finished = True
        self.decoder.abort(self.stream)

    # ---- updates out
    async def updates(self):
        """Every update of every decoder stream of this connection, in order, on one time line;
        ends after the ``last`` one."""
        while True:
            stream, offset = await self._streams.get()
            while True:
                up: StreamUpdate = await stream.updates.get()
                ended_by_finalize = up.last and stream.id in self._finalized and not up.error
                words = [
                    Word(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.confidence) for w in up.words
                ]
                yield LiveUpdate(
                    partial=up.partial,
                    final=up.final,
                    words=words,
                    end=round(up.end + offset, 3),
                    lag=up.lag,
                    from_finalize=ended_by_finalize,
                    last=up.last and not ended_by_finalize,
                    error=up.error,
                    fatal=up.fatal,
                )
                if up.last:
                    self._finishing.discard(stream.id)
                    break
            if not ended_by_finalize:
                return


class AppendOnly:
    """Revisable partials and finals as append-only deltas (OpenAI's transcription deltas), so that
    the deltas concatenate exactly to the text they end with. A word is sent once it is stable: in
    two partials in a row and not the partial's last word (the last one may still grow); a final
    sends what is left of its utterance. Utterances are joined with a space."""

    def __init__(self):
        self.text = ""  # everything sent so far
        self._utterance: list[str] = []  # words of the current utterance already sent
        self._previous: list[str] = []  # the previous partial's words

    def _send(self, words: list[str]) -> str:
        new = words[len(self._utterance) :]
        if not new:
            return ""
        delta = ("" if not self.text else " ") + " ".join(new)
        self._utterance = list(words)
        self.text += delta
        return delta

    def partial(self, text: str) -> str:
        words = text.split()
        stable = []
        for a, b in zip(words[:-1], self._previous):
            if a != b:
                break
            stable.append(a)
        self._previous = words
        if stable[: len(self._utterance)] != self._utterance:
            return ""  # the model revised a word already sent: wait for the final
        return self._send(stable)

    def final(self, text: str) -> str:
        """What is left of the utterance; ``text`` then becomes ``self.text``'s last utterance
        unless a sent word was revised (the sent words stand; the rest follows them)."""
        words = text.split()
        if words[: len(self._utterance)] != self._utterance:
            words = self._utterance + words[len(self._utterance) :]
        delta = self._send(words)
        self._utterance, self._previous = [], []
        return delta
