"""Client for the Parakeet worker.

    python client.py batch http://127.0.0.1:8000 speech.mp3 [--format srt] [--api-key KEY]
    python client.py batch https://api.runpod.ai/v2/ENDPOINT_ID speech.mp3 --api-key $RUNPOD_API_KEY
    python client.py stream ws://127.0.0.1:8765 speech.wav [--token T] [--fast]

``batch_transcribe_runpod`` submits a job to ``/run`` and polls ``/status/{id}`` with backoff; it
works against RunPod and against the SDK's local ``--rp_serve_api`` server.
``ASRWebSocketClient`` / ``stream_file_to_websocket`` speak the real-time WebSocket protocol.
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

from parakeet_worker.config.constants import SAMPLE_RATE


class TranscriptionError(RuntimeError):
    """The job failed (``code`` from docs/PROTOCOL.md, e.g. invalid_audio) or the endpoint could not be reached."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


async def batch_transcribe_runpod(
    endpoint_url: str,
    api_key: str | None,
    audio_file: str | Path,
    timestamps: bool = True,
    *,
    output_format: str = "json",
    timeout: float = 3600.0,
    **options,
) -> dict:
    """Transcribe a local file through a RunPod endpoint (or the local SDK server); return the output.

    ``options`` are passed as job input fields (e.g. ``chunk_long_audio=True``).
    Raises TranscriptionError with the worker's error code when the job fails.
    """
    import aiohttp

    audio = Path(audio_file).read_bytes()
    job_input = {
        "audio_base64": base64.b64encode(audio).decode("ascii"),
        "timestamps": timestamps,
        "output_format": output_format,
        **options,
    }
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


# ---------------------------------------------------------------------------------------------
# real-time streaming
class ASRWebSocketClient:
    """One real-time session::

    async with ASRWebSocketClient("ws://127.0.0.1:8765", token=None) as c:
        await c.start(sample_rate=SAMPLE_RATE)
        await c.send_audio(pcm16_bytes)
        await c.stop()                      # the server answers the last finals, then "done"
        async for msg in c:                 # transcription / error messages, ends after "done"
            ...
    """

    def __init__(self, url: str, token: str | None = None, open_timeout: float = 30.0):
        self.url, self.token, self.open_timeout = url, token, open_timeout
        self.ws = None
        self.session_id: str | None = None

    async def __aenter__(self) -> ASRWebSocketClient:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            self.ws = await connect(self.url, additional_headers=headers, open_timeout=self.open_timeout, max_size=None)
        except InvalidStatus as exc:
            code = exc.response.status_code
            body = exc.response.body.decode(errors="replace").strip()
            raise TranscriptionError(
                f"connection refused: HTTP {code} {body}", "unauthorized" if code == 401 else None
            ) from None
        try:
            welcome = json.loads(await self.ws.recv())
        except ConnectionClosed as exc:  # e.g. 1013: over capacity or still loading
            await self.ws.close()
            raise TranscriptionError(
                f"connection closed by the server ({exc.rcvd.code if exc.rcvd else 1006}): "
                f"{exc.rcvd.reason if exc.rcvd else 'no reason'}"
            ) from None
        if welcome.get("type") != "welcome":
            await self.ws.close()
            raise TranscriptionError(f"unexpected first message: {welcome}")
        self.session_id = welcome.get("session_id")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()

    async def start(
        self, sample_rate: int = SAMPLE_RATE, chunk_duration: float = 2.0, timestamps: bool = True, **options
    ) -> dict:
        """``options``: further ``start`` fields, e.g. ``hotwords=["Kubernetes"], hotword_boost=2.0``."""
        await self.ws.send(
            json.dumps(
                {
                    "action": "start",
                    "sample_rate": sample_rate,
                    "chunk_duration": chunk_duration,
                    "timestamps": timestamps,
                    **options,
                }
            )
        )
        reply = json.loads(await self.ws.recv())
        if reply.get("type") != "started":
            raise TranscriptionError(reply.get("message", str(reply)), reply.get("code"))
        return reply

    async def send_audio(self, pcm16: bytes) -> None:
        await self.ws.send(pcm16)

    async def finalize(self) -> None:
        """What was heard becomes final now (its final comes with ``from_finalize``)."""
        await self.ws.send(json.dumps({"action": "finalize"}))

    async def keepalive(self) -> None:
        """Keep an idle session open (a client not sending audio while its user is silent)."""
        await self.ws.send(json.dumps({"action": "keepalive"}))

    async def configure(self, **fields) -> None:
        """Mid-stream: ``partial_interval``, ``hotwords``, ``hotword_boost``, ``latency``; the
        ``configured`` answer arrives among the results."""
        await self.ws.send(json.dumps({"action": "configure", **fields}))

    async def stop(self) -> None:
        await self.ws.send(json.dumps({"action": "stop"}))

    def __aiter__(self):
        return self._messages()

    async def _messages(self):
        async for raw in self.ws:
            if isinstance(raw, bytes):
                continue
            msg = json.loads(raw)
            yield msg
            if msg.get("type") == "done":
                return


def pcm16_bytes(audio) -> bytes:
    """Float samples in [-1, 1] as the PCM16 little-endian bytes the WebSocket protocol takes."""
    import numpy as np

    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


async def stream_file_to_websocket(
    websocket_url: str,
    audio_file: str | Path,
    chunk_duration: float = 2.0,
    realtime: bool = True,
    token: str | None = None,
    show: bool = True,
    frame_seconds: float = 0.1,
    hotwords: list[str] | None = None,
) -> str:
    """Decode any audio file, stream it as 16 kHz PCM16 (paced in real time unless ``realtime``
    is false), print partials and finals, return the final transcript (the server's ``done``)."""
    from parakeet_worker.audio.decode import decode_audio_async

    audio = (await decode_audio_async(Path(audio_file), max_seconds=24 * 3600.0)).samples
    pcm = pcm16_bytes(audio)
    step = int(SAMPLE_RATE * frame_seconds) * 2
    async with ASRWebSocketClient(websocket_url, token) as client:
        await client.start(SAMPLE_RATE, chunk_duration, **({"hotwords": hotwords} if hotwords else {}))

        async def sender():
            t0 = time.monotonic()
            for k, i in enumerate(range(0, len(pcm), step)):
                await client.send_audio(pcm[i : i + step])
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + (k + 1) * frame_seconds - time.monotonic()))
            await client.stop()

        task = asyncio.create_task(sender())
        done = None
        try:
            async for msg in _until_done(client, task):
                kind = msg.get("type")
                if kind == "transcription" and show:
                    mark = "FINAL  " if msg["is_final"] else "partial"
                    print(f"[{msg['start']:7.2f}-{msg['end']:7.2f}] {mark} {msg['text']}", flush=True)
                elif kind == "error":
                    raise TranscriptionError(msg.get("message", ""), msg.get("code"))
                elif kind == "done":
                    done = msg
        finally:
            if not task.done():
                task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if done is None:
        raise TranscriptionError("the server closed the session before 'done'")
    return done["text"]


async def _until_done(client: ASRWebSocketClient, sender: asyncio.Task, after_stop_s: float = 60.0):
    """The session's messages; fails if the sender fails or ``done`` is late after the stop."""
    it = client.__aiter__()
    nxt = asyncio.ensure_future(anext(it))
    try:
        while True:
            waiting = {nxt} if sender.done() else {nxt, sender}
            finished, _ = await asyncio.wait(
                waiting, timeout=after_stop_s if sender.done() else None, return_when=asyncio.FIRST_COMPLETED
            )
            if not finished:
                raise TranscriptionError(f"no 'done' from the server {after_stop_s:g} s after stop")
            if sender in finished and sender.exception() is not None:
                raise TranscriptionError(f"sending audio failed: {sender.exception()}")
            if nxt in finished:
                try:
                    msg = nxt.result()
                except StopAsyncIteration:
                    return
                yield msg
                nxt = asyncio.ensure_future(anext(it))
    finally:
        nxt.cancel()


def main(argv: list[str] | None = None) -> int:
    from parakeet_worker.config.errors import ASRError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("batch", help="transcribe a file through a RunPod endpoint or the local server")
    b.add_argument("endpoint_url")
    b.add_argument("audio_file")
    b.add_argument("--format", dest="output_format", default="json", choices=["json", "text", "srt", "vtt"])
    b.add_argument("--api-key", default=os.environ.get("RUNPOD_API_KEY"))
    b.add_argument("--no-timestamps", action="store_true")
    b.add_argument("--chunk-long-audio", action="store_true")
    b.add_argument("--hotword", dest="hotwords", action="append", help="a word or phrase to boost (repeatable)")
    st = sub.add_parser("stream", help="stream a file to the real-time WebSocket server")
    st.add_argument("websocket_url")
    st.add_argument("audio_file")
    st.add_argument("--token", default=os.environ.get("WS_AUTH_TOKEN"))
    st.add_argument("--chunk-duration", type=float, default=2.0, help="seconds of audio between partials")
    st.add_argument("--fast", action="store_true", help="send as fast as possible instead of in real time")
    st.add_argument("--hotword", dest="hotwords", action="append", help="a word or phrase to boost (repeatable)")
    args = ap.parse_args(argv)
    if args.command == "stream":
        try:
            text = asyncio.run(
                stream_file_to_websocket(
                    args.websocket_url,
                    args.audio_file,
                    args.chunk_duration,
                    realtime=not args.fast,
                    token=args.token,
                    hotwords=args.hotwords,
                )
            )
        except (TranscriptionError, OSError, ASRError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(text)
        return 0
    if args.command == "batch":
        extra = {"chunk_long_audio": True} if args.chunk_long_audio else {}
        if args.hotwords:
            extra["hotwords"] = args.hotwords
        try:
            out = asyncio.run(
                batch_transcribe_runpod(
                    args.endpoint_url,
                    args.api_key,
                    args.audio_file,
                    not args.no_timestamps,
                    output_format=args.output_format,
                    **extra,
                )
            )
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
