"""What the bytes are: base64 (and data: URLs) to bytes, and the container a file really is,
sniffed from its first bytes. Only recognised audio containers are ever decoded (decode.py)."""

from __future__ import annotations

import base64
import binascii
import re

from parakeet_worker.config.errors import AUDIO_TOO_LARGE, INVALID_INPUT, ASRError

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
        text = text[m.end() :]
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
DEMUXERS = {
    "wav": "wav",
    "flac": "flac",
    "ogg": "ogg",
    "opus": "ogg",
    "webm": "matroska",
    "m4a": "mov",
    "mp3": "mp3",
    "aac": "aac",
    "aiff": "aiff",
    "amr": "amr",
    "wma": "asf",
}

_NOT_AUDIO = {  # common non-audio files, refused with a clear name rather than "invalid audio"
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive",
    b"GIF8": "a GIF image",
    b"\x7fELF": "an executable",
}


def not_audio(head: bytes) -> str | None:
    for magic, name in _NOT_AUDIO.items():
        if head.startswith(magic):
            return name
    stripped = head.lstrip()[:15].lower()
    if stripped.startswith((b"<!doctype", b"<html", b"<?xml", b"{", b"[")):
        return "a text document (HTML, XML or JSON)"
    return None


# ---------------------------------------------------------------------------------------------
# the worker-wide decode memory budget
