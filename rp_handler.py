"""RunPod serverless entry: validate the job, fetch and decode its audio, transcribe, format.

    python -u rp_handler.py                      # on RunPod
    python rp_handler.py --rp_serve_api          # the SDK's local HTTP server (/run, /runsync, /status)

``{"action": "websocket"}`` starts the real-time WebSocket server in this worker (on the same
engine) and keeps the job alive while clients stream (websocket_job.py); ``WORKER_MODE=load_balancer``
runs only that server, for RunPod load-balancing endpoints. The input and output contract is in
docs/PROTOCOL.md; the input schema and its rules in serving/job_schema.py.

Every failure becomes ``{"error": "<code>: <message>"}`` (the job is marked FAILED); the worker
itself never dies on a bad job. Several jobs run at once (``concurrency_modifier``, fewer when
memory runs high) so that the engine's dynamic batcher can put them in one forward pass.

SIGTERM/SIGINT (runtime/lifecycle.py): the SDK stops taking jobs and waits for the running ones; a
websocket job flushes its streams and ends with ``reason: "shutdown"``; the process exits 0 within
``DRAIN_TIMEOUT_S``. A lost GPU (a non-OOM CUDA error): every job fails with ``internal_error``
and ``"refresh_worker": true`` (RunPod then replaces the worker), and once the jobs in flight
have answered the process exits with ``lifecycle.EXIT_DEVICE_LOST``. Each job writes one
structured log line (runtime/metrics.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time

import runpod
import torch

from parakeet_worker.audio import fetch
from parakeet_worker.audio.budget import DecodeBudget
from parakeet_worker.audio.decode import DecodedAudio, decode_audio_async
from parakeet_worker.audio.formats import decode_base64
from parakeet_worker.config.errors import INTERNAL_ERROR, OUT_OF_MEMORY, ASRError
from parakeet_worker.config.logs import configure_logging
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.runtime import hardware, lifecycle, metrics
from parakeet_worker.runtime.scheduling import BLOCKING_POOL, run_in
from parakeet_worker.serving.formatting import job_output
from parakeet_worker.serving.job_schema import Request, parse_request
from parakeet_worker.serving.progress import ProgressReporter, post_progress

log = logging.getLogger("rp_handler")
SETTINGS = Settings.from_env_or_exit()
DECODE_BUDGET = DecodeBudget(SETTINGS.decode_budget_bytes)  # shared by every job
_engine: Engine | None = None
_in_flight = 0  # handler calls not yet returned: a lost GPU's exit waits for their answers
DEVICE_LOST_ERROR = {
    "error": f"{INTERNAL_ERROR}: this worker's GPU failed; retry the job (the worker is replaced)",
    "refresh_worker": True,
}  # the SDK turns refresh_worker into stopPod for the platform


def get_engine() -> Engine:
    """The one shared engine, loaded and warmed on first use (at start-up in ``main``)."""
    global _engine
    if _engine is None:
        _engine = Engine(SETTINGS)
    return _engine


async def fetch_audio(req: Request, engine: Engine) -> DecodedAudio:
    """The job's audio, decoded within the worker's decode budget. A cancelled job leaves no
    temp file and no ffmpeg behind (download and decode clean up on cancellation)."""
    s = SETTINGS
    if req.audio_base64 is not None:
        with engine.request_arriving():  # jobs that arrive together are batched together
            data = await run_in(BLOCKING_POOL, decode_base64, req.audio_base64, s.max_audio_bytes)
            return await decode_audio_async(data, s.max_audio_seconds, req.format, DECODE_BUDGET)
    policy = fetch.DownloadPolicy.from_settings(s)
    path = await fetch.download(req.audio_url, policy)
    try:
        with engine.request_arriving():
            return await decode_audio_async(path, s.max_audio_seconds, req.format, DECODE_BUDGET)
    finally:
        path.unlink(missing_ok=True)


async def handler(job: dict) -> dict:
    global _in_flight
    # the SDK (or uvicorn) installed its signal handlers by now: ours chain in front of them
    lifecycle.install_signal_handlers(SETTINGS.drain_timeout_s)
    _in_flight += 1
    try:
        with metrics.JobRecord(str(job.get("id", ""))) as record:
            out = dict(DEVICE_LOST_ERROR) if lifecycle.LIFECYCLE.poisoned else await _handle(job, record)
            if "error" in out:
                record.fail(out["error"].split(":", 1)[0])
            return out
    finally:
        _in_flight -= 1


async def _handle(job: dict, record: metrics.JobRecord) -> dict:
    t0 = time.perf_counter()
    try:
        req = parse_request(job.get("input"))
        if req.action == "websocket":
            from parakeet_worker.serving.websocket_job import websocket_job  # the WebSocket stack only where it is used

            record.kind = "websocket_job"
            summary = await websocket_job(job, req, SETTINGS, get_engine)
            # its streams were failed and closed 1011 (websocket_handler): the job asks for a new worker
            return dict(DEVICE_LOST_ERROR) if lifecycle.LIFECYCLE.poisoned else summary
        engine = get_engine()
        audio = await fetch_audio(req, engine)
        record.audio_s = audio.duration
        progress = None
        if audio.duration > 60:
            progress = ProgressReporter(job, audio.duration, send=functools.partial(post_progress, SETTINGS))
            progress(0.0)
        transcript = await engine.transcribe(
            audio.samples,
            use_local_attention=req.use_local_attention,
            chunk_long_audio=req.chunk_long_audio,
            chunk_duration=req.chunk_duration,
            hotwords=req.hotwords,
            on_progress=progress,
        )
        # hours of audio make a large output: built off the event loop (other jobs' streams run on it)
        format_output = functools.partial(
            job_output,
            transcript,
            timestamps=req.timestamps,
            output_format=req.output_format,
            model=engine.model_name,
            processing_time=time.perf_counter() - t0,
        )
        return await run_in(BLOCKING_POOL, format_output)
    except ASRError as exc:
        return {"error": str(exc)}
    except (MemoryError, torch.OutOfMemoryError):  # the engine recovers GPU OOM itself; this is what is left
        log.exception("out of memory")
        return {"error": f"{OUT_OF_MEMORY}: out of memory while processing this job"}
    except Exception as exc:  # noqa: BLE001 - a bug must fail one job, not the worker
        if hardware.is_device_lost(exc):  # logged once by lifecycle.poison; no CUDA text in the output
            return dict(DEVICE_LOST_ERROR)
        log.exception("job failed")
        return {"error": f"{INTERNAL_ERROR}: the job failed unexpectedly; it has been logged"}


async def generator_handler(job: dict):
    """``RUNPOD_GENERATOR_HANDLER=1``: the generator form. A websocket job yields the ready
    message (readable at ``/stream/{id}``) and then the summary; a transcribe job yields its one
    output - which RunPod then returns as a one-element list, hence not the default."""
    try:
        req = parse_request(job.get("input"))
    except ASRError as exc:
        yield {"error": str(exc)}
        return
    if req.action == "websocket":
        from parakeet_worker.serving.websocket_job import serve_websocket

        async for message in serve_websocket(job, req, SETTINGS, get_engine):
            yield dict(DEVICE_LOST_ERROR) if lifecycle.LIFECYCLE.poisoned else message
    else:
        yield await handler(job)


def concurrency_modifier(current: int) -> int:
    """Enough jobs in flight to fill one dynamic batch, while memory allows: above
    MEMORY_HIGH_WATER one job fewer each time the SDK asks (down to 1), below it one more;
    while draining, none (the SDK also stops taking jobs itself)."""
    if lifecycle.LIFECYCLE.draining:
        return 1
    if hardware.memory_used_fraction(_engine.device if _engine else None) > SETTINGS.memory_high_water:
        return max(1, current - 1)
    return min(max(1, SETTINGS.max_batch_size), current + 1)


def _exit_after_device_lost() -> None:
    """On a lost GPU (a drain callback): once every job in flight has answered (our handler
    calls, and the SDK's own record of jobs whose results it still posts), exit non-zero so the
    platform replaces the worker. lifecycle's watchdog bounds the wait (POISON_DRAIN_S)."""
    if not lifecycle.LIFECYCLE.poisoned:
        return  # a SIGTERM drain: the SDK finishes the jobs and main() exits

    def wait_then_exit():
        from runpod.serverless.modules.worker_state import JobsProgress

        while _in_flight or JobsProgress().get_job_count():
            time.sleep(0.05)
        time.sleep(0.5)  # the last answer's bytes on their way (the SDK posts after the handler returns)
        lifecycle.exit_now(lifecycle.EXIT_DEVICE_LOST)

    threading.Thread(target=wait_then_exit, name="device-lost-exit", daemon=True).start()


def main() -> None:
    configure_logging(SETTINGS)
    hardware.require_device(SETTINGS.device)  # DEVICE=cuda without a usable GPU: stop, loudly
    if SETTINGS.worker_mode == "load_balancer":
        # RunPod load-balancing endpoint: traffic goes straight to our WebSocket server on PORT,
        # health checks to GET /ping on PORT_HEALTH (204 while loading, 200 when warm)
        from parakeet_worker.serving.app import run_server

        asyncio.run(run_server(SETTINGS, SETTINGS.listen_host, SETTINGS.listen_port))  # until drained
        lifecycle.exit_now(lifecycle.LIFECYCLE.exit_code)  # non-zero after a lost GPU
    lifecycle.LIFECYCLE.on_drain(_exit_after_device_lost)
    get_engine()  # load and warm up before taking jobs (a signal meanwhile ends the process at once)
    # before the SDK's server: uvicorn restores and re-raises to this handler when it stops
    lifecycle.install_signal_handlers(SETTINGS.drain_timeout_s)
    if SETTINGS.generator_handler:
        runpod.serverless.start(
            {
                "handler": generator_handler,
                "return_aggregate_stream": True,
                "concurrency_modifier": concurrency_modifier,
            }
        )
    else:
        runpod.serverless.start({"handler": handler, "concurrency_modifier": concurrency_modifier})
    # The SDK returns once it stopped (a signal): every job has finished. Exit now: tearing down
    # the interpreter's torch/NeMo objects takes 15-20 s on a busy CPU, past many drain budgets.
    lifecycle.exit_now(lifecycle.LIFECYCLE.exit_code)


if __name__ == "__main__":
    main()
