"""HTTP uploads (the OpenAI and Deepgram file routes): a body read within a time limit and a byte
budget, the audio spooled to disk as it arrives; ``APIError`` carries the status, message and code
each dialect words in its own shape (``response()`` is OpenAI's error object). ``HttpApi`` is what
the HTTP routes share: the server, the upload budget and the decode memory budget.

A slow or stalled upload is cut off (UPLOAD_STALL_S, UPLOAD_MIN_RATE, UPLOAD_TIMEOUT_S), all
uploads together hold at most SPOOL_BUDGET bytes of disk, and whatever the parser raises for a
malformed form is the client's 400, never the server's 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import BodyPartReader, MultipartReader, web

from parakeet_worker.audio.budget import DecodeBudget
from parakeet_worker.config.errors import AUDIO_TOO_LARGE
from parakeet_worker.runtime import metrics

FORM_OVERHEAD = 64 * 1024  # bytes of form fields and part headers allowed beside the file
MAX_PARTS = 512  # form parts in one request (up to 100 hotwords are the most a client needs)
READ_SIZE = 256 * 1024


class ClientGone(Exception):
    """The client went away mid-upload: nobody to answer (logged and counted as cancelled)."""


class UploadBudget:
    """What all uploads in flight may hold together: at most ``max_uploads`` at once (more get
    429 at once) and ``max_bytes`` spooled to disk in all (an upload that would pass it gets 503)."""

    def __init__(self, max_uploads: int, max_bytes: int):
        self.max_uploads, self.max_bytes = max_uploads, max_bytes
        self.active = 0
        self.spooled = 0

    @contextlib.contextmanager
    def upload(self):
        """One upload's share: a slot, and the bytes it reserves (``Upload.reserve``), all given
        back when it ends, however it ends."""
        if self.active >= self.max_uploads:
            metrics.REFUSALS.labels("uploads").inc()
            raise APIError(
                429,
                f"{self.max_uploads} uploads are already in progress on this worker; retry shortly",
                kind="rate_limit_error",
                code="too_many_uploads",
            )
        self.active += 1
        ticket = Upload(self)
        try:
            yield ticket
        finally:
            self.active -= 1
            self.spooled -= ticket.reserved


class Upload:
    def __init__(self, budget: UploadBudget):
        self.budget, self.reserved = budget, 0

    def reserve(self, n: int) -> None:
        b = self.budget
        if b.spooled + n > b.max_bytes:
            metrics.REFUSALS.labels("spool").inc()
            raise APIError(
                503,
                "this worker holds too much uploaded audio right now; retry shortly",
                kind="server_error",
                code="server_busy",
            )
        b.spooled += n
        self.reserved += n


class _CountedBody:
    """The request body as the multipart parser reads it: every byte counts against the request's
    limit (preamble, boundaries and part headers too, with or without Content-Length), and no
    read may wait longer than ``stall_s`` for the client (a stalled upload is a 408)."""

    def __init__(self, stream, limit: int, stall_s: float, min_rate: float = 0.0):
        self._stream, self.limit, self.stall_s, self.n = stream, limit, stall_s, 0
        self.min_rate, self.t0 = min_rate, time.monotonic()

    def __getattr__(self, name):  # at_eof and the rest: the stream's own
        return getattr(self._stream, name)

    def _count(self, data: bytes) -> bytes:
        self.n += len(data)
        if self.n > self.limit:
            raise APIError(
                413,
                f"the request is larger than the {self.limit} byte limit (MAX_AUDIO_BYTES + form)",
                param="file",
                code=AUDIO_TOO_LARGE,
            )
        elapsed = time.monotonic() - self.t0
        # a byte now and then keeps every read under the stall limit: past a grace period the
        # upload must also keep an average rate
        if self.min_rate and elapsed > self.stall_s and self.n < self.min_rate * elapsed:
            raise APIError(
                408, f"the upload is slower than {self.min_rate:g} bytes/s (UPLOAD_MIN_RATE)", code="upload_timeout"
            )
        return data

    async def _wait(self, aw):
        try:
            async with asyncio.timeout(self.stall_s):
                return await aw
        except TimeoutError:
            raise APIError(
                408, f"the upload stalled: no data for {self.stall_s:g} s (UPLOAD_STALL_S)", code="upload_timeout"
            ) from None

    async def readline(self, *args, **kwargs) -> bytes:
        return self._count(await self._wait(self._stream.readline(*args, **kwargs)))

    async def read(self, n: int = -1) -> bytes:
        return self._count(await self._wait(self._stream.read(n)))

    def unread_data(self, data: bytes) -> None:
        self.n -= len(data)
        self._stream.unread_data(data)


class APIError(Exception):
    """An error answered as OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> web.Response:
        return web.json_response(
            {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}},
            status=self.status,
        )


@dataclass(frozen=True)
class UploadLimits:
    """How much and how slowly a client may upload (MAX_AUDIO_BYTES, UPLOAD_STALL_S,
    UPLOAD_TIMEOUT_S, UPLOAD_MIN_RATE)."""

    max_bytes: int
    stall_s: float
    timeout_s: float
    min_rate: float = 0.0

    @classmethod
    def from_settings(cls, s) -> UploadLimits:
        return cls(s.max_audio_bytes, s.upload_stall_s, s.upload_timeout_s, s.upload_min_rate)


@contextlib.asynccontextmanager
async def _within(timeout_s: float):
    """The whole upload within ``timeout_s`` (else 408); a client gone is ``ClientGone``."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        raise APIError(
            408, f"the upload took longer than {timeout_s:g} s (UPLOAD_TIMEOUT_S)", code="upload_timeout"
        ) from None
    except ConnectionError:
        raise ClientGone from None


async def read_form(request: web.Request, spool: Path, upload: Upload, limits: UploadLimits) -> dict[str, list[str]]:
    """Read the multipart form: the ``file`` part goes to ``spool`` (at most ``limits.max_bytes``,
    reserved in ``upload`` as it is written), the text fields come back by name. A form the parser
    cannot read is a 400, a client gone ``ClientGone``."""
    if request.content_type != "multipart/form-data":
        raise APIError(415, f"Content-Type must be multipart/form-data, not '{request.content_type}'")
    max_bytes = limits.max_bytes
    if request.content_length is not None and request.content_length > max_bytes + FORM_OVERHEAD:
        raise _too_large(max_bytes)
    try:
        async with _within(limits.timeout_s):
            body = _CountedBody(request.content, max_bytes + FORM_OVERHEAD, limits.stall_s, limits.min_rate)
            return await _read_parts(MultipartReader(request.headers, body), max_bytes, spool, upload)
    except (APIError, ClientGone, asyncio.CancelledError):
        raise
    except OSError:
        raise  # this server's disk: a server error
    except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the form is the client's
        # (the parser's own message may quote the client's bytes: only its kind is told back)
        raise APIError(
            400,
            f"the multipart form could not be read ({type(exc).__name__}): check the boundary, "
            "the part headers and the closing boundary",
        ) from None


async def _read_parts(reader: MultipartReader, max_bytes: int, spool: Path, upload: Upload) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    parts = text_bytes = 0
    async for part in reader:
        parts += 1
        if parts > MAX_PARTS:
            raise APIError(400, f"the form has more than {MAX_PARTS} parts")
        if not isinstance(part, BodyPartReader) or not part.name:
            raise APIError(400, "every form part needs a name")
        if part.name == "file":
            if "file" in fields:
                raise APIError(400, "'file' was given more than once", param="file")
            fields["file"] = [part.filename or ""]
            size = 0
            with spool.open("wb") as out:
                while chunk := await part.read_chunk(READ_SIZE):
                    size += len(chunk)
                    if size > max_bytes:
                        raise _too_large(max_bytes)
                    upload.reserve(len(chunk))
                    out.write(chunk)
        else:  # a text field: read in chunks, all of them together capped (never buffered whole)
            raw = bytearray()
            while chunk := await part.read_chunk(8192):
                raw += chunk
                text_bytes += len(chunk)
                if text_bytes > FORM_OVERHEAD:
                    raise APIError(
                        400, f"the form's text fields are longer than {FORM_OVERHEAD} bytes in all", param=part.name
                    )
            fields.setdefault(part.name, []).append(part.decode(bytes(raw)).decode("utf-8", "replace"))
    if "file" not in fields:
        raise APIError(400, "a 'file' part with the audio is required", param="file")
    return fields


def _too_large(max_bytes: int) -> APIError:
    return APIError(
        413, f"the file is larger than the {max_bytes} byte limit (MAX_AUDIO_BYTES)", param="file", code=AUDIO_TOO_LARGE
    )


@dataclass
class HttpApi:
    """What the HTTP API routes share: the server (engine, readiness, drain accounting), the
    upload budget (spool disk, concurrent uploads) and the decode memory budget."""

    server: object  # the ASRServer (asr_server.py)
    uploads: UploadBudget
    decode_budget: DecodeBudget
    limits: UploadLimits


API_KEY = web.AppKey("http_api", HttpApi)


def install(app: web.Application, server) -> HttpApi:
    s = server.settings
    app[API_KEY] = state = HttpApi(
        server,
        UploadBudget(s.max_uploads, s.spool_budget),
        DecodeBudget(s.decode_budget_bytes),
        UploadLimits.from_settings(s),
    )
    return state


async def read_body(request: web.Request, spool: Path, upload: Upload, limits: UploadLimits) -> int:
    """A raw request body (the audio itself) spooled to ``spool`` within the same limits as a
    form's file part; its size."""
    if request.content_length is not None and request.content_length > limits.max_bytes:
        raise _too_large(limits.max_bytes)
    body = _CountedBody(request.content, limits.max_bytes, limits.stall_s, limits.min_rate)
    size = 0
    async with _within(limits.timeout_s):
        with spool.open("wb") as out:
            while chunk := await body.read(READ_SIZE):
                size += len(chunk)
                upload.reserve(len(chunk))
                out.write(chunk)
    return size
