"""Audio in: base64, content sniffing, decoding to 16 kHz mono float32 within a memory budget.

Data flows one way: ``decode_base64`` (or ``fetch.download``) gives bytes (or a temp file),
``decode_audio_async`` turns them into a float32 array at 16 kHz. Every failure is an
``ASRError`` with a code from errors.py. Hostile input is expected here (docs/SECURITY.md):
- only recognised audio containers are decoded, ffmpeg gets the sniffed demuxer explicitly and may
  open only the one local file, so playlists, manifests and concat lists never reach it;
- the decoded size is bounded before decoding, multichannel audio is downmixed and resampled in
  blocks, and ffmpeg's output is read into a buffer that stops at the duration limit;
- a ``DecodeBudget`` shared by the worker caps the memory all concurrent decodes may hold;
- a cancelled decode kills its ffmpeg and removes its temp file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import math
import os
import re
import tempfile
import threading
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from constants import SAMPLE_RATE
from errors import (
    AUDIO_TOO_LARGE,
    AUDIO_TOO_LONG,
    INTERNAL_ERROR,
    INVALID_AUDIO,
    INVALID_INPUT,
    UNSUPPORTED_FORMAT,
    ASRError,
)

KNOWN_FORMATS = {"wav", "flac", "mp3", "ogg", "opus", "webm", "m4a", "mp4", "aac", "mka", "mkv", "wma", "aiff", "amr"}


# ---------------------------------------------------------------------------------------------
# base64
_DATA_URL = re.compile(r"^data:[^,]*?(;base64)?,", re.IGNORECASE)


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Standard or URL-safe base64, with or without padding or a ``data:...;base64,`` prefix."""
    if not isinstance(text, str) or not text.strip():
        raise ASRError(INVALID_INPUT, "audio_base64 is empty")
    m = _DATA_URL.match(text)
    if m:
        text = text[m.end():]
    text = "".join(text.split())  # line breaks from MIME encoders
    if len(text) * 3 // 4 > max_bytes:
        raise ASRError(AUDIO_TOO_LARGE, f"audio is larger than the {max_bytes} byte limit")
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ASRError(INVALID_INPUT, "audio_base64 is not valid base64") from None
    if not data:
        raise ASRError(INVALID_INPUT, "audio_base64 decodes to no bytes")
    return data


# ---------------------------------------------------------------------------------------------
# content sniffing
def sniff_format(head: bytes) -> str | None:
    """The container named by the first bytes of a file, or None if not recognised as audio."""
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "opus" if b"OpusHead" in head[:256] else "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06)):
        return "mp3"
    if len(head) > 1 and head[0] == 0xFF and (head[1] & 0xF6) == 0xF0:
        return "aac"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:6] == b"#!AMR\n":
        return "amr"
    if head[:4] == b"\x30\x26\xb2\x75":
        return "wma"
    return None


# The ffmpeg demuxer for each sniffed container, passed with -f: ffmpeg never probes, so no
# playlist (HLS), manifest (DASH), concat, SDP or image-sequence demuxer can ever be chosen.
DEMUXERS = {"wav": "wav", "flac": "flac", "ogg": "ogg", "opus": "ogg", "webm": "matroska", "m4a": "mov",
            "mp3": "mp3", "aac": "aac", "aiff": "aiff", "amr": "amr", "wma": "asf"}

_NOT_AUDIO = {  # common non-audio files, refused with a clear name rather than "invalid audio"
    b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive", b"GIF8": "a GIF image", b"\x7fELF": "an executable",
}


def _not_audio(head: bytes) -> str | None:
    for magic, name in _NOT_AUDIO.items():
        if head.startswith(magic):
            return name
    stripped = head.lstrip()[:15].lower()
    if stripped.startswith((b"<!doctype", b"<html", b"<?xml", b"{", b"[")):
        return "a text document (HTML, XML or JSON)"
    return None


# ---------------------------------------------------------------------------------------------
# the worker-wide decode memory budget
class DecodeBudget:
    """Bytes of decoded audio all concurrent decodes may hold together. A decode reserves its
    worst case before it starts and waits (first come, first served) while the budget is used up;
    one larger than the whole budget gets the whole budget and must fit in it."""

    def __init__(self, total_bytes: int):
        self.total = max(1, int(total_bytes))
        self.used = 0
        self._lock = threading.Lock()  # decodes may be awaited from more than one event loop
        self._waiters: deque[tuple[int, asyncio.Future]] = deque()

    @asynccontextmanager
    async def reserve(self, nbytes: int):
        """Yields the bytes granted (``min(nbytes, total)``) and gives them back on exit."""
        need = max(0, min(int(nbytes), self.total))
        fut = None
        with self._lock:
            if not self._waiters and self.used + need <= self.total:
                self.used += need
            else:
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append((need, fut))
        if fut is not None:
            try:
                await fut
            except asyncio.CancelledError:
                with self._lock:
                    if (need, fut) in self._waiters:  # not granted yet: just leave the queue
                        self._waiters.remove((need, fut))
                        self._wake()
                    # else: granted but not delivered; _deliver gives it back
                raise
        try:
            yield need
        finally:
            self._release(need)

    def _release(self, n: int) -> None:
        with self._lock:
            self.used -= n
            self._wake()

    def _wake(self) -> None:  # with the lock held
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            need, fut = self._waiters.popleft()
            self.used += need
            fut.get_loop().call_soon_threadsafe(self._deliver, need, fut)

    def _deliver(self, need: int, fut: asyncio.Future) -> None:
        if fut.done():  # its decode was cancelled meanwhile
            self._release(need)
        else:
            fut.set_result(None)


@asynccontextmanager
async def _reserve(budget: DecodeBudget | None, max_samples: int, overhead: int):
    """Reserve a decode's worst case: its output buffer (``max_samples`` float32, as a growing
    bytearray) plus ``overhead``. Yields the samples it may produce: ``max_samples``, or fewer
    when the whole budget is smaller than that."""
    need = int(max_samples * 4 * _GROWTH) + overhead
    if budget is None:
        yield max_samples
        return
    async with budget.reserve(need) as granted:
        yield max_samples if granted >= need else max(0, int((granted - overhead) / _GROWTH) // 4)


# ---------------------------------------------------------------------------------------------
# decoding
@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32, mono, 16 kHz
    format: str  # what sniffing found

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


UNKNOWN_FRAMES = 1 << 62  # libsndfile's frame count for a stream of unknown length (piped FLAC)
BLOCK_BYTES = 4 << 20  # source audio read per block (all channels): bounds the soundfile path's RAM
MAX_STDERR = 64 << 10  # ffmpeg messages kept (a damaged file can print many)
_GROWTH = 1.125  # a growing bytearray over-allocates up to this much


class _TooLong(Exception):
    pass


class _NotFinite(Exception):
    pass


def _not_finite() -> ASRError:
    # NaN or infinite samples (a float WAV may carry them) are no audio the model can transcribe
    # (found by tools/fuzz.py; tests/fuzz_corpus/decode/)
    return ASRError(INVALID_AUDIO, "the audio contains NaN or infinite samples")


class PcmBuffer:
    """Decoded 16 kHz float32 samples, growing in place up to ``max_samples``: the array handed
    on is a view of this buffer (no second copy)."""

    def __init__(self, max_samples: int):
        self.max_bytes = max(0, int(max_samples)) * 4
        self.data = bytearray()

    def append_bytes(self, chunk: bytes | memoryview) -> None:
        if len(self.data) + len(chunk) > self.max_bytes:
            raise _TooLong
        self.data += chunk

    def append(self, samples: np.ndarray) -> None:
        self.append_bytes(memoryview(np.ascontiguousarray(samples, dtype="<f4")).cast("B"))

    def samples(self) -> np.ndarray:
        usable = len(self.data) - len(self.data) % 4
        return np.frombuffer(self.data, dtype="<f4", count=usable // 4)


def _samples(seconds: float) -> int:
    return int(math.ceil(seconds * SAMPLE_RATE))


def decode_audio(source: bytes | Path, max_seconds: float, format_hint: str | None = None,
                 budget: DecodeBudget | None = None) -> DecodedAudio:
    """Blocking form of ``decode_audio_async`` for scripts, tools and tests (callable from inside
    a running event loop too: it runs its own loop on a helper thread)."""
    coro_args = (source, max_seconds, format_hint, budget)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(decode_audio_async(*coro_args))
    result: list = []

    def run() -> None:
        try:
            result.append(asyncio.run(decode_audio_async(*coro_args)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


async def decode_audio_async(source: bytes | Path, max_seconds: float, format_hint: str | None = None,
                             budget: DecodeBudget | None = None) -> DecodedAudio:
    """Decode audio bytes or a file to 16 kHz mono float32.

    WAV and FLAC go through soundfile (exact, in blocks); other recognised containers, and WAV/FLAC
    that soundfile refuses, through ffmpeg with that container's demuxer. Raises ASRError:
    invalid_audio, unsupported_format, audio_too_long.
    """
    if format_hint is not None:
        hint = format_hint.strip().lower().lstrip(".") if isinstance(format_hint, str) else ""
        if hint not in KNOWN_FORMATS:
            raise ASRError(UNSUPPORTED_FORMAT, f"format {format_hint!r} is not supported; use one of "
                           + ", ".join(sorted(KNOWN_FORMATS)))
    head = bytes(source[:512]) if isinstance(source, (bytes, bytearray)) else _read_head(source)
    if not head:
        raise ASRError(INVALID_AUDIO, "the audio is empty (0 bytes)")
    fmt = sniff_format(head)
    if fmt is None:
        what = _not_audio(head)
        # Never "let ffmpeg try": its probing would pick playlist and manifest demuxers that open
        # other files and URLs (an HLS playlist naming a local file is ~90 bytes).
        raise ASRError(UNSUPPORTED_FORMAT, f"the input is {what}, not audio" if what else
                       "the input is not a recognised audio container (WAV, FLAC, MP3, OGG/Opus, WebM, "
                       "M4A/MP4, AAC, AIFF, AMR, WMA)")
    if fmt in ("wav", "flac"):
        samples = await _decode_soundfile(source, max_seconds, budget)
        if samples is not None:
            return DecodedAudio(samples, fmt)
    samples = await _decode_ffmpeg(source, DEMUXERS[fmt], max_seconds, budget)
    return DecodedAudio(samples, fmt)


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(512)


def _too_long(max_seconds: float, seconds: float | None = None) -> ASRError:
    if seconds is None:
        return ASRError(AUDIO_TOO_LONG, f"audio is longer than the {max_seconds:.0f} s limit")
    return ASRError(AUDIO_TOO_LONG, f"audio is {seconds:.0f} s long; the limit is {max_seconds:.0f} s")


def _open_soundfile(source: bytes | Path):
    import soundfile as sf

    return sf.SoundFile(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source))


async def _decode_soundfile(source: bytes | Path, max_seconds: float, budget: DecodeBudget | None) -> np.ndarray | None:
    """None when soundfile cannot read the file (odd WAV codecs): ffmpeg gets it then."""
    try:
        with _open_soundfile(source) as f:  # reads the header only
            rate, channels, frames = f.samplerate, f.channels, f.frames
    except Exception:  # noqa: BLE001 - soundfile refuses some valid files; ffmpeg judges them
        return None
    if rate <= 0 or channels <= 0:
        return None
    if not 0 < frames < UNKNOWN_FRAMES:
        # Written to a pipe (FLAC's STREAMINFO says 0 samples): libsndfile reports an "infinite"
        # length and fails on the last partial block; ffmpeg reads such streams to their end.
        return None
    if frames / rate > max_seconds:
        raise _too_long(max_seconds, frames / rate)  # refused before a single sample is decoded
    block = max(256, BLOCK_BYTES // (4 * channels))
    overhead = 3 * block * channels * 4 + (4 << 20)  # a block, its mono mix, the resampler's state
    # the resampler's output may differ from the exact ratio by a few samples
    async with _reserve(budget, _samples(frames / rate) + 1024, overhead) as max_samples:
        cancelled = threading.Event()
        try:
            # in a thread (it is CPU work); the thread stops at the next block once cancelled
            return await asyncio.to_thread(_soundfile_blocks, source, block, max_samples, max_seconds, cancelled)
        finally:
            cancelled.set()


def _soundfile_blocks(source: bytes | Path, block: int, max_samples: int, max_seconds: float,
                      cancelled: threading.Event) -> np.ndarray | None:
    import soxr

    out = PcmBuffer(max_samples)
    try:
        with _open_soundfile(source) as f:
            rate, channels = f.samplerate, f.channels
            resampler = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
            max_frames = int(max_seconds * rate)
            read = 0
            while not cancelled.is_set():
                audio = f.read(block, dtype="float32", always_2d=True)
                if not len(audio):
                    break
                read += len(audio)
                if read > max_frames:
                    raise _TooLong
                mono = audio.mean(axis=1, dtype=np.float32) if channels > 1 else audio[:, 0]
                if not np.isfinite(mono).all():  # float WAV can carry NaN/inf (or overflow the mix)
                    raise _NotFinite
                if resampler is not None:
                    mono = resampler.resample_chunk(np.ascontiguousarray(mono), last=False)
                out.append(mono)
            if resampler is not None:
                out.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    except _TooLong:
        raise _too_long(min(max_seconds, max_samples / SAMPLE_RATE)) from None
    except _NotFinite:
        raise _not_finite() from None
    except Exception:  # noqa: BLE001 - a damaged file: ffmpeg decides (and names the damage)
        return None
    return out.samples()


def _ffmpeg_command(path: Path, demuxer: str, max_seconds: float) -> list[str]:
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
            # the input may open exactly one local file (no http, no other protocols), read with
            # the demuxer sniffing chose (no probing)
            "-protocol_whitelist", "file", "-f", demuxer, "-i", f"file:{path}",
            "-map", "0:a:0", "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(SAMPLE_RATE),
            "-t", f"{max_seconds + 1:.3f}", "-f", "f32le", "pipe:1"]


async def _decode_ffmpeg(source: bytes | Path, demuxer: str, max_seconds: float,
                         budget: DecodeBudget | None) -> np.ndarray:
    tmp: Path | None = None
    proc = None
    try:
        if isinstance(source, (bytes, bytearray)):
            # a file, not a pipe: MP4/M4A keep their index at the end and need seeking
            fd, name = tempfile.mkstemp(prefix="asr-in-")
            tmp = Path(name)
            with os.fdopen(fd, "wb") as f:
                f.write(source)
        path = tmp or Path(source)
        overhead = 1 << 20
        async with _reserve(budget, _samples(max_seconds), overhead) as max_samples:
            out = PcmBuffer(max_samples)
            proc = await asyncio.create_subprocess_exec(
                *_ffmpeg_command(path, demuxer, max_seconds), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            try:
                err = await asyncio.wait_for(_collect(proc, out), timeout=max(60.0, max_seconds / 10))
            except _TooLong:
                raise _too_long(min(max_seconds, out.max_bytes / 4 / SAMPLE_RATE)) from None
            except TimeoutError:
                raise ASRError(INVALID_AUDIO, "decoding the audio took too long") from None
            if proc.returncode is not None and proc.returncode < 0:  # killed by a signal: not the audio's fault
                raise ASRError(INTERNAL_ERROR, f"the audio decoder was stopped (signal {-proc.returncode}); try again")
            if proc.returncode != 0:
                if "matches no streams" in err or "does not contain any stream" in err:
                    raise ASRError(UNSUPPORTED_FORMAT, "the file contains no audio stream")
                raise ASRError(INVALID_AUDIO, "the audio could not be decoded (corrupt, truncated or not audio)")
            if err.strip():
                # ffmpeg decodes what it can of a damaged file and reports the rest at error level;
                # a silently partial transcript would be worse than a clear refusal.
                raise ASRError(INVALID_AUDIO, "the audio is corrupt or truncated; ffmpeg could not decode all of it")
            samples = out.samples()
            if not np.isfinite(samples).all():
                raise _not_finite()
            return samples
    finally:
        # cancelled, timed out or done: no ffmpeg outlives its job, no temp file either
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it exited just now
                proc.kill()
            # its pipes are read to their end too: a cancelled read leaves stdout paused, and the
            # process's wait() only returns once every pipe has closed (it would hang for good)
            await asyncio.shield(asyncio.gather(proc.wait(), _drain(proc.stdout), _drain(proc.stderr)))
        if tmp is not None:
            tmp.unlink(missing_ok=True)


async def _drain(stream) -> None:
    with contextlib.suppress(Exception):
        while stream is not None and await stream.read(1 << 20):
            pass


async def _collect(proc, out: PcmBuffer) -> str:
    """ffmpeg's stdout into ``out`` (stops with _TooLong at its limit), stderr capped; its message."""
    err_task = asyncio.ensure_future(_read_capped(proc.stderr, MAX_STDERR))
    try:
        while chunk := await proc.stdout.read(1 << 20):
            out.append_bytes(chunk)
        await proc.wait()
        return (await err_task).decode("utf-8", "replace")
    finally:
        if not err_task.done():
            err_task.cancel()


async def _read_capped(stream, limit: int) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(1 << 16):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept)

