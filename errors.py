"""The product's error type: one code from SPEC plus a message a user can act on.

Every failure a request can cause is raised as ``ASRError`` and reaches the user as
``{"error": "<code>: <message>"}`` (batch) or ``{"type": "error", "code", "message"}`` (WebSocket).
"""

from __future__ import annotations

INVALID_INPUT = "invalid_input"
INVALID_AUDIO = "invalid_audio"
AUDIO_TOO_LARGE = "audio_too_large"
AUDIO_TOO_LONG = "audio_too_long"
DOWNLOAD_FAILED = "download_failed"
FORBIDDEN_URL = "forbidden_url"
UNSUPPORTED_FORMAT = "unsupported_format"
INTERNAL_ERROR = "internal_error"


class ASRError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
