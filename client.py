"""Client for the Parakeet worker.

    python client.py batch http://127.0.0.1:8000 speech.mp3 [--format srt] [--api-key KEY]
    python client.py batch https://api.runpod.ai/v2/ENDPOINT_ID speech.mp3 --api-key $RUNPOD_API_KEY

``batch_transcribe_runpod`` submits a job to ``/run`` and polls ``/status/{id}`` with backoff; it
works against RunPod and against the SDK's local ``--rp_serve_api`` server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path


class TranscriptionError(RuntimeError):
    """The job failed (``code`` from SPEC, e.g. invalid_audio) or the endpoint could not be reached."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


async def batch_transcribe_runpod(endpoint_url: str, api_key: str | None, audio_file: str | Path,
                                  timestamps: bool = True, *, output_format: str = "json",
                                  timeout: float = 3600.0, **options) -> dict:
    """Transcribe a local file through a RunPod endpoint (or the local SDK server); return the output.

    ``options`` are passed as job input fields (e.g. ``chunk_long_audio=True``).
    Raises TranscriptionError with the worker's error code when the job fails.
    """
    import aiohttp

    audio = Path(audio_file).read_bytes()
    job_input = {"audio_base64": base64.b64encode(audio).decode("ascii"), "timestamps": timestamps,
                 "output_format": output_format, **options}
    base = endpoint_url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=300)) as http:
        job = await _json(await http.post(f"{base}/run", json={"input": job_input}))
        if "id" not in job:
            raise TranscriptionError(f"the endpoint did not accept the job: {job}")
        delay = 0.2
        while True:
            status = await _status(http, f"{base}/status/{job['id']}")
            state = status.get("status")
            if state == "COMPLETED":
                return status.get("output")
            if state in ("FAILED", "CANCELLED", "TIMED_OUT"):
                error = status.get("error") or (status.get("output") or {}).get("error") or state
                code = error.split(":", 1)[0] if isinstance(error, str) and ":" in error else None
                raise TranscriptionError(f"job {job['id']} {state.lower()}: {error}", code)
            if time.monotonic() > deadline:
                raise TranscriptionError(f"job {job['id']} did not finish within {timeout:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)


async def _status(http, url: str) -> dict:
    # RunPod's API answers GET /status; the SDK's local --rp_serve_api server only POST.
    async with http.get(url) as resp:
        if resp.status != 405:
            return await _json(resp)
    return await _json(await http.post(url))


async def _json(resp) -> dict:
    async with resp:
        if resp.status >= 400:
            raise TranscriptionError(f"HTTP {resp.status} from {resp.url}: {(await resp.text())[:300]}")
        return await resp.json(content_type=None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("batch", help="transcribe a file through a RunPod endpoint or the local server")
    b.add_argument("endpoint_url")
    b.add_argument("audio_file")
    b.add_argument("--format", dest="output_format", default="json", choices=["json", "text", "srt", "vtt"])
    b.add_argument("--api-key", default=os.environ.get("RUNPOD_API_KEY"))
    b.add_argument("--no-timestamps", action="store_true")
    b.add_argument("--chunk-long-audio", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "batch":
        extra = {"chunk_long_audio": True} if args.chunk_long_audio else {}
        try:
            out = asyncio.run(batch_transcribe_runpod(args.endpoint_url, args.api_key, args.audio_file,
                                                      not args.no_timestamps, output_format=args.output_format,
                                                      **extra))
        except TranscriptionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.output_format in ("srt", "vtt"):
            print(out[args.output_format])
        elif args.output_format == "text":
            print(out["text"])
        else:
            print(json.dumps(out, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
