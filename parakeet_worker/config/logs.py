"""Logging: one set-up for every entry point, and the filters that keep secrets and client noise
out of the server's logs."""

from __future__ import annotations

import logging
import re

from parakeet_worker.config.settings import Settings


def configure_logging(settings: Settings) -> None:
    """The one logging set-up, for every entry point (worker, WebSocket server, model bake).
    ``force``: the RunPod SDK configures the root logger when it is imported (at INFO), which
    would otherwise make LOG_LEVEL a no-op under rp_handler.py."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s", force=True)


class RedactTokens(logging.Filter):
    """The server logs each request line at DEBUG (http_server's request log): the token must never
    be in it."""

    SECRET = re.compile(r"(token=)[^&\s]+|(authorization:?\s*)(bearer\s+)?\S+", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.SECRET.sub(lambda m: (m.group(1) or m.group(2) + (m.group(3) or "")) + "<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class ClientErrorsInOneLine(logging.Filter):
    """aiohttp logs a malformed request head with a full traceback at ERROR: anyone could flood
    the logs with them. One INFO line instead (the client's fault, not the server's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = f"malformed request from a client ({type(exc).__name__})", None
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def request_log() -> logging.Logger:
    """The HTTP server's request log (one DEBUG line per request), with tokens redacted."""
    log = logging.getLogger("websocket.connections")
    if not any(isinstance(f, RedactTokens) for f in log.filters):
        log.addFilter(RedactTokens())
    return log


def quiet_client_errors() -> None:
    """aiohttp's malformed-request tracebacks become one INFO line (idempotent)."""
    log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorsInOneLine) for f in log.filters):
        log.addFilter(ClientErrorsInOneLine())
