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
import contextlib
import io
import math
import os
import tempfile
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parakeet_worker.audio.budget import DecodeBudget
from parakeet_worker.audio.formats import DEMUXERS, KNOWN_FORMATS, not_audio, sniff_format
from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.errors import (
    AUDIO_TOO_LONG,
    INTERNAL_ERROR,
    INVALID_AUDIO,
    UNSUPPORTED_FORMAT,
    ASRError,
)


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


def decode_audio(
    source: bytes | Path, max_seconds: float, format_hint: str | None = None, budget: DecodeBudget | None = None
) -> DecodedAudio:
    """Blocking form of ``decode_audio_async`` for scripts, tools and tests. Inside a running event
    loop it refuses (it would block the loop): await ``decode_audio_async`` there, as every route does."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(decode_audio_async(source, max_seconds, format_hint, budget))
    raise RuntimeError("decode_audio blocks: inside an event loop, await decode_audio_async")


async def decode_audio_async(
    source: bytes | Path, max_seconds: float, format_hint: str | None = None, budget: DecodeBudget | None = None
) -> DecodedAudio:
    """Decode audio bytes or a file to 16 kHz mono float32.

    WAV and FLAC go through soundfile (exact, in blocks); other recognised containers, and WAV/FLAC
    that soundfile refuses, through ffmpeg with that container's demuxer. Raises ASRError:
    invalid_audio, unsupported_format, audio_too_long.
    """
    if format_hint is not None:
        hint = format_hint.strip().lower().lstrip(".") if isinstance(format_hint, str) else ""
        if hint not in KNOWN_FORMATS:
            raise ASRError(
                UNSUPPORTED_FORMAT,
                f"format {format_hint!r} is not supported; use one of " + ", ".join(sorted(KNOWN_FORMATS)),
            )
    head = bytes(source[:512]) if isinstance(source, (bytes, bytearray)) else _read_head(source)
    if not head:
        raise ASRError(INVALID_AUDIO, "the audio is empty (0 bytes)")
    fmt = sniff_format(head)
    if fmt is None:
        what = not_audio(head)
        # Never "let ffmpeg try": its probing would pick playlist and manifest demuxers that open
        # other files and URLs (an HLS playlist naming a local file is ~90 bytes).
        raise ASRError(
            UNSUPPORTED_FORMAT,
            f"the input is {what}, not audio"
            if what
            else "the input is not a recognised audio container (WAV, FLAC, MP3, OGG/Opus, WebM, "
            "M4A/MP4, AAC, AIFF, AMR, WMA)",
        )
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


def _soundfile_blocks(
    source: bytes | Path, block: int, max_samples: int, max_seconds: float, cancelled: threading.Event
) -> np.ndarray | None:
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
    return [
        "ffmpeg",
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        # the input may open exactly one local file (no http, no other protocols), read with
        # the demuxer sniffing chose (no probing)
        "-protocol_whitelist",
        "file",
        "-f",
        demuxer,
        "-i",
        f"file:{path}",
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-t",
        f"{max_seconds + 1:.3f}",
        "-f",
        "f32le",
        "pipe:1",
    ]


async def _decode_ffmpeg(
    source: bytes | Path, demuxer: str, max_seconds: float, budget: DecodeBudget | None
) -> np.ndarray:
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
                *_ffmpeg_command(path, demuxer, max_seconds),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
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
