"""Live transcription over WebSocket: run the streaming server on its own.

    python websocket_handler.py --port 8765      # loads PARAKEET_MODEL, serves ws://0.0.0.0:8765

One port serves the WebSocket protocol (docs/PROTOCOL.md), the microphone page at ``/``, the
OpenAI-compatible ``POST /v1/audio/transcriptions``, ``GET /ping`` and ``GET /metrics``; the same
server runs under ``WORKER_MODE=load_balancer`` and, in queue mode, for ``{"action": "websocket"}``
jobs (rp_handler.py). Where each part lives:

- parakeet_worker/serving/session.py - the protocol: one connection is one ``Session``;
- parakeet_worker/serving/asr_server.py - the sessions, tokens, readiness and drain on one engine;
- parakeet_worker/serving/http_server.py - the aiohttp routes, connection limits and guards;
- parakeet_worker/engine/streaming.py - the batched streaming decoder all sessions share.

SIGTERM/SIGINT drain it: every open stream gets its last final and ``done``, then 1001.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from parakeet_worker.config.logs import configure_logging
from parakeet_worker.config.settings import Settings
from parakeet_worker.runtime import hardware, lifecycle
from parakeet_worker.serving.app import run_server


def main() -> None:
    s = Settings.from_env_or_exit()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=s.listen_host)
    ap.add_argument("--port", type=int, default=s.listen_port)
    args = ap.parse_args()
    configure_logging(s)
    hardware.require_device(s.device)  # DEVICE=cuda without a usable GPU: stop, loudly
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_server(s, args.host, args.port))
    if lifecycle.LIFECYCLE.draining:
        # drained (not waiting for a model still loading, nor the teardown); non-zero after a lost GPU
        lifecycle.exit_now(lifecycle.LIFECYCLE.exit_code)


if __name__ == "__main__":
    main()
