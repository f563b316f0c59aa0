"""The product's one error type and every error code it sends (docs/PROTOCOL.md lists them).

A failure a request can cause is raised as ``ASRError(code, message)``. A batch job answers it as
``{"error": "<code>: <message>"}`` (RunPod then marks the job FAILED); a WebSocket session answers
``{"type": "error", "code", "message"}`` and, for the recoverable codes, keeps the connection open.
"""

from __future__ import annotations

# batch jobs (and the checks they share with WebSocket sessions)
INVALID_INPUT = "invalid_input"
INVALID_AUDIO = "invalid_audio"
AUDIO_TOO_LARGE = "audio_too_large"
AUDIO_TOO_LONG = "audio_too_long"  # also a WebSocket stream past MAX_AUDIO_SECONDS
DOWNLOAD_FAILED = "download_failed"
FORBIDDEN_URL = "forbidden_url"
UNSUPPORTED_FORMAT = "unsupported_format"
OUT_OF_MEMORY = "out_of_memory"  # a clip that fits in memory neither batched, alone, nor with local attention
INTERNAL_ERROR = "internal_error"  # also a WebSocket stream whose decoding failed

# WebSocket sessions only
INVALID_JSON = "invalid_json"  # a text frame that is not a JSON object
UNKNOWN_ACTION = "unknown_action"
ALREADY_STARTED = "already_started"
INVALID_SAMPLE_RATE = "invalid_sample_rate"
NOT_STARTED = "not_started"  # audio or stop before start
IDLE_TIMEOUT = "idle_timeout"  # sent before the server closes a silent session
CLOSING = "closing"  # sent before the server closes every session (a websocket job's max_lifetime)


class DeviceLost(RuntimeError):
    """The accelerator's context is gone (a non-OOM CUDA error): no later GPU call can succeed in
    this process. Raised by the engine for work that arrives after the loss; the worker fails
    what it holds, reports unhealthy and exits so the platform replaces it (lifecycle.poison)."""


class ASRError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
