"""Audio in: base64 and URL sources, the URL policy, content sniffing, decoding to 16 kHz mono float32.

Data flows one way: ``decode_base64`` or ``download`` give bytes (or a temp file), ``decode_audio``
turns them into a float32 array at 16 kHz. Every failure is an ``ASRError`` with a code from errors.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import os
import re
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np

from constants import SAMPLE_RATE
from errors import (
    AUDIO_TOO_LARGE,
    AUDIO_TOO_LONG,
    DOWNLOAD_FAILED,
    FORBIDDEN_URL,
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
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
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
# decoding
@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32, mono, 16 kHz
    format: str  # what sniffing (or the hint) found

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def decode_audio(source: bytes | Path, max_seconds: float, format_hint: str | None = None) -> DecodedAudio:
    """Decode audio bytes or a file to 16 kHz mono float32.

    WAV and FLAC go through soundfile (fast, exact); everything else, and anything soundfile
    refuses, through ffmpeg. Raises ASRError: invalid_audio, unsupported_format, audio_too_long.
    """
    if format_hint is not None:
        hint = format_hint.strip().lower().lstrip(".")
        if hint not in KNOWN_FORMATS:
            raise ASRError(UNSUPPORTED_FORMAT, f"format {format_hint!r} is not supported; use one of "
                           + ", ".join(sorted(KNOWN_FORMATS)))
    head = source[:512] if isinstance(source, bytes) else _read_head(source)
    if not head:
        raise ASRError(INVALID_AUDIO, "the audio is empty (0 bytes)")
    fmt = sniff_format(head)
    if fmt is None:
        what = _not_audio(head)
        if what:
            raise ASRError(UNSUPPORTED_FORMAT, f"the input is {what}, not audio")
    if fmt in ("wav", "flac"):
        samples = _decode_soundfile(source, max_seconds)
        if samples is not None:
            return DecodedAudio(samples, fmt)
    samples = _decode_ffmpeg(source, max_seconds)
    return DecodedAudio(samples, fmt or (format_hint or "unknown"))


def _read_head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(512)


def _too_long(seconds: float, max_seconds: float) -> ASRError:
    return ASRError(AUDIO_TOO_LONG, f"audio is {seconds:.0f} s long; the limit is {max_seconds:.0f} s")


def _decode_soundfile(source: bytes | Path, max_seconds: float) -> np.ndarray | None:
    import soundfile as sf
    import soxr

    try:
        with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as f:
            if f.frames / f.samplerate > max_seconds:
                raise _too_long(f.frames / f.samplerate, max_seconds)
            audio = f.read(dtype="float32", always_2d=True)
            rate = f.samplerate
    except ASRError:
        raise
    except Exception:  # noqa: BLE001 - soundfile refuses some valid files (odd WAV codecs); ffmpeg gets them
        return None
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _decode_ffmpeg(source: bytes | Path, max_seconds: float) -> np.ndarray:
    tmp = None
    if isinstance(source, bytes):
        # A file, not a pipe: MP4/M4A keep their index at the end and need seeking.
        tmp = tempfile.NamedTemporaryFile(prefix="asr-in-", delete=False)
        tmp.write(source)
        tmp.close()
        path = tmp.name
    else:
        path = str(source)
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-i", path, "-map", "0:a:0",
           "-vn", "-sn", "-dn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-t", f"{max_seconds + 1:.3f}",
           "-f", "f32le", "pipe:1"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=max(60.0, max_seconds / 10))
    except subprocess.TimeoutExpired:
        raise ASRError(INVALID_AUDIO, "decoding the audio took too long") from None
    finally:
        if tmp is not None:
            os.unlink(tmp.name)
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        if "matches no streams" in err or "does not contain any stream" in err:
            raise ASRError(UNSUPPORTED_FORMAT, "the file contains no audio stream")
        raise ASRError(INVALID_AUDIO, "the audio could not be decoded (corrupt, truncated or not audio)")
    samples = np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)
    if samples.size / SAMPLE_RATE > max_seconds:
        raise _too_long(samples.size / SAMPLE_RATE, max_seconds)
    if err.strip():
        # ffmpeg decodes what it can of a damaged file and reports the rest at error level;
        # a silently partial transcript would be worse than a clear refusal.
        raise ASRError(INVALID_AUDIO, "the audio is corrupt or truncated; ffmpeg could not decode all of it")
    return samples


# ---------------------------------------------------------------------------------------------
# URL policy: one pure function, no traffic
_BLOCKED_NAMES = {"localhost", "metadata", "metadata.google.internal", "instance-data"}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip.sixtofour:
        return ip.sixtofour
    if ip.teredo:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_is_public(address: str) -> bool:
    """True only for globally routable unicast addresses (so never loopback, private, link-local
    (cloud metadata 169.254.169.254), carrier-grade NAT, multicast, unspecified or reserved), also
    when an IPv4 address hides inside an IPv6 one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None and not address_is_public(str(inner)):
            return False
    return ip.is_global and not ip.is_multicast


def check_url(url: str, addresses: list[str] | None, *, allow_private: bool = False,
              allowed_hosts: tuple[str, ...] = ()) -> None:
    """Decide whether ``url`` may be fetched, given the addresses its host resolved to.

    ``addresses`` None means "not resolved yet": only the scheme and host name are checked.
    Raises ASRError(forbidden_url) or ASRError(invalid_input); returns None when allowed.
    Hosts listed in ``allowed_hosts`` ("host" or "host:port") skip the address check.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ASRError(INVALID_INPUT, "audio_url is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ASRError(FORBIDDEN_URL, f"only http and https URLs are allowed, not {parts.scheme or 'none'!r}")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise ASRError(INVALID_INPUT, "audio_url has no host")
    if parts.username or parts.password:
        raise ASRError(FORBIDDEN_URL, "URLs with credentials are not allowed")
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    if allow_private or host in allowed_hosts or f"{host}:{port}" in allowed_hosts:
        return
    if host in _BLOCKED_NAMES or host.endswith(".localhost") or host.endswith(".internal"):
        raise ASRError(FORBIDDEN_URL, f"host {host!r} is not allowed")
    literal = _as_ip(host)
    for addr in ([literal] if literal else []) + list(addresses or []):
        if not address_is_public(addr):
            raise ASRError(FORBIDDEN_URL, f"{host!r} points to a non-public address ({addr})")


def _as_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# downloads
@dataclass(frozen=True)
class DownloadPolicy:
    max_bytes: int
    timeout_s: float
    max_redirects: int
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()


async def download(url: str, policy: DownloadPolicy) -> Path:
    """Fetch ``url`` to a temp file (the caller deletes it), following at most ``max_redirects``
    redirects and checking the URL policy on every hop, after DNS resolution, before connecting.
    The connection goes to exactly the addresses that were checked (no DNS rebinding window)."""
    import aiohttp

    resolver = _PolicyResolver(policy)
    timeout = aiohttp.ClientTimeout(total=policy.timeout_s, sock_connect=min(10.0, policy.timeout_s))
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=4)
    fd, name = tempfile.mkstemp(prefix="asr-dl-")
    os.close(fd)
    path = Path(name)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, trust_env=False) as session:
            for _ in range(policy.max_redirects + 1):
                check_url(url, None, allow_private=policy.allow_private, allowed_hosts=policy.allowed_hosts)
                resolver.current_url = url
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308):
                        location = resp.headers.get("Location")
                        if not location:
                            raise ASRError(DOWNLOAD_FAILED, f"redirect ({resp.status}) without a Location")
                        url = urljoin(url, location)
                        continue
                    if resp.status != 200:
                        raise ASRError(DOWNLOAD_FAILED, f"the server answered HTTP {resp.status}")
                    declared = resp.content_length
                    if declared is not None and declared > policy.max_bytes:
                        raise ASRError(AUDIO_TOO_LARGE,
                                       f"the file is {declared} bytes; the limit is {policy.max_bytes}")
                    size = 0
                    with open(path, "wb") as f:
                        async for block in resp.content.iter_chunked(1 << 16):
                            size += len(block)
                            if size > policy.max_bytes:
                                raise ASRError(AUDIO_TOO_LARGE,
                                               f"the download passed the {policy.max_bytes} byte limit")
                            f.write(block)
                    return path
            raise ASRError(DOWNLOAD_FAILED, f"more than {policy.max_redirects} redirects")
    except ASRError:
        path.unlink(missing_ok=True)
        raise
    except TimeoutError:
        path.unlink(missing_ok=True)
        raise ASRError(DOWNLOAD_FAILED, f"the download timed out after {policy.timeout_s:.0f} s") from None
    except Exception as exc:  # noqa: BLE001 - any network failure is the user's download failing
        path.unlink(missing_ok=True)
        cause = exc.__cause__ if isinstance(exc.__cause__, ASRError) else None
        if cause is not None:
            raise cause from None
        raise ASRError(DOWNLOAD_FAILED, f"could not fetch the URL ({type(exc).__name__})") from None


class _PolicyResolver:
    """aiohttp resolver that applies ``check_url`` to the resolved addresses of every hop."""

    def __init__(self, policy: DownloadPolicy):
        self.policy = policy
        self.current_url = ""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror:
            raise ASRError(DOWNLOAD_FAILED, f"could not resolve host {host!r}") from None
        addrs = [info[4][0] for info in infos]
        check_url(self.current_url, addrs, allow_private=self.policy.allow_private,
                  allowed_hosts=self.policy.allowed_hosts)
        return [{"hostname": host, "host": info[4][0], "port": port, "family": info[0], "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for info in infos]

    async def close(self) -> None:
        return None
