"""Fairness benchmark: does a live stream stall while batch jobs run on the same engine?

    python bench/stall_bench.py                                  # tiny model, in-process, loopback
    python bench/stall_bench.py --long-s 600 --short 16 --stream-s 40

One live WebSocket stream of continuous speech (sentences with short pauses, so the partial
hypothesis changes at nearly every decoding step), paced in real time, is measured twice in the
same process: alone, and beside one long batch job plus ``--short`` short ones submitted through
the product's job handler (base64 WAV -> decode -> engine) on the server's own event loop, as in a
worker that serves RunPod jobs and WebSocket clients at once. Reported per run:
- ``max_gap_s``: the longest time between two messages to the stream, from its start to ``done``;
- ``max_lag_s``: the largest (receive time - send time) of the audio a message covers, i.e. how far
  behind real time the stream's results fell at worst;
- the batch jobs' wall times and whether they all succeeded.
Loopback only. Keep runs short on a shared CPU (run it under ``nice``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import io
import json
import os
import platform
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded by file path (tests)
from _paths import ROOT, shown  # noqa: E402  puts the repository on sys.path
from client import ASRWebSocketClient, pcm16_bytes  # noqa: E402
from tools.test_model import synth  # noqa: E402

FRAME_S = 0.1
SR = 16000


def speech(seconds: float, seed: int, gap_s: float = 0.3) -> np.ndarray:
    """Continuous espeak-ng speech: random sentences separated by ``gap_s`` of silence."""
    rng = random.Random(seed)
    words = synth.load_words("en")
    parts, n = [], 0
    while n < seconds * SR:
        u = synth.synthesize(synth.random_sentence(rng, words, 5, 10), "en", "en-us", rng, augment=False)
        parts += [u.audio, np.zeros(int(gap_s * SR), np.float32)]
        n += len(u.audio) + int(gap_s * SR)
    return np.concatenate(parts)[: int(seconds * SR)]


def tile(audio: np.ndarray, seconds: float) -> np.ndarray:
    reps = int(np.ceil(seconds * SR / len(audio)))
    return np.tile(audio, reps)[: int(seconds * SR)]


def wav_base64(audio: np.ndarray) -> str:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


async def live_stream(url: str, audio: np.ndarray, started: asyncio.Event | None = None) -> dict:
    """Stream ``audio`` in real time; return gap/lag figures and the transcript."""
    pcm = pcm16_bytes(audio)
    step = int(SR * FRAME_S) * 2
    received: list[tuple[float, float]] = []  # (wall time, audio seconds the message reaches)
    async with ASRWebSocketClient(url) as c:
        await c.start(SR, chunk_duration=0.0)
        t0 = time.monotonic()
        sent = {"stop": None}

        async def sender():
            for k, i in enumerate(range(0, len(pcm), step)):
                await c.send_audio(pcm[i : i + step])
                if k == int(1.0 / FRAME_S) and started is not None:
                    started.set()  # the stream is live: let the batch load begin
                await asyncio.sleep(max(0.0, t0 + (k + 1) * FRAME_S - time.monotonic()))
            sent["stop"] = time.monotonic()
            await c.stop()

        task = asyncio.create_task(sender())
        text = ""
        async for msg in c:
            now = time.monotonic()
            if msg.get("type") == "transcription":
                received.append((now, float(msg.get("end", 0.0))))
            elif msg.get("type") == "done":
                text = msg["text"]
                received.append((now, float(msg.get("duration", 0.0))))
        await task
    # Every message until ``done`` counts: a stalled stream gets its results late, after stop.
    times = [t0] + [t for t, _ in received]
    gaps = np.diff(times)
    # a message covering audio up to `e` could not have been sent before t0 + e (real-time pacing)
    lags = [t - (t0 + e) for t, e in received]
    return {
        "messages": len(received),
        "max_gap_s": round(float(gaps.max()), 3),
        "p95_gap_s": round(float(np.percentile(gaps, 95)), 3),
        "max_lag_s": round(max(lags), 3) if lags else None,
        "stop_to_done_s": round(received[-1][0] - sent["stop"], 3),
        "words": len(text.split()),
    }


class InProcessWorker:
    """The product's WebSocket server and job handler on one event loop in a thread."""

    def __init__(self, model: str):
        import rp_handler
        from parakeet_worker.config.settings import Settings
        from parakeet_worker.engine.engine import Engine
        from parakeet_worker.engine.model_loader import load_model
        from parakeet_worker.serving.asr_server import ASRServer

        self.settings = dataclasses.replace(Settings.from_env(), model=model)
        self.engine = Engine(self.settings, model=load_model(model))
        rp_handler._engine = self.engine  # jobs use this engine (the worker's one shared engine)
        self.handler = rp_handler.handler
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            self.server = ASRServer(self.settings, self.engine)
            listener = await self.server.serve("127.0.0.1", 0)
            self.url = f"ws://127.0.0.1:{listener.port}"

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(300)

    def submit(self, job_input: dict) -> asyncio.Future:
        """Run one job on the worker's loop; an asyncio future in the caller's loop."""
        fut = asyncio.run_coroutine_threadsafe(self._timed(job_input), self.loop)
        return asyncio.wrap_future(fut)

    async def _timed(self, job_input: dict):
        t0 = time.monotonic()
        out = await self.handler({"id": "bench", "input": job_input})
        return time.monotonic() - t0, out


async def run_mixed(worker: InProcessWorker, stream_audio, long_b64: str, short_b64: list[str]) -> dict:
    started = asyncio.Event()

    async def batch_load():
        await started.wait()
        futs = [worker.submit({"audio_base64": long_b64, "timestamps": True})]
        await asyncio.sleep(0.2)  # the long job holds the engine first: the worst case for the stream
        futs += [worker.submit({"audio_base64": b, "timestamps": True}) for b in short_b64]
        return await asyncio.gather(*futs)

    stream_res, jobs = await asyncio.gather(live_stream(worker.url, stream_audio, started), batch_load())
    errors = [out["error"] for _, out in jobs if "error" in out]
    return {
        **stream_res,
        "long_job_s": round(jobs[0][0], 2),
        "short_jobs_max_s": round(max(t for t, _ in jobs[1:]), 2) if len(jobs) > 1 else None,
        "jobs_failed": len(errors),
        "job_errors": errors[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))
    ap.add_argument("--stream-s", type=float, default=30.0, help="seconds of live speech")
    ap.add_argument("--long-s", type=float, default=600.0, help="the long batch job's audio")
    ap.add_argument("--short", type=int, default=16, help="short batch jobs")
    ap.add_argument("--short-s", type=float, default=6.0)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    import torch

    worker = InProcessWorker(args.model)
    stream_audio = speech(args.stream_s, seed=14)
    pool = speech(60.0, seed=15)
    long_b64 = wav_base64(tile(pool, args.long_s))
    short_b64 = [wav_base64(speech(args.short_s, seed=100 + i)) for i in range(args.short)]
    alone = asyncio.run(live_stream(worker.url, stream_audio))
    print(json.dumps({"run": "alone", **alone}), flush=True)
    mixed = asyncio.run(run_mixed(worker, stream_audio, long_b64, short_b64))
    print(json.dumps({"run": "mixed", **mixed}), flush=True)
    dev = (
        torch.cuda.get_device_name(0)
        if worker.engine.device.type == "cuda"
        else f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"
    )
    result = {
        "device": dev,
        "model": shown(args.model),
        "stream_s": args.stream_s,
        "long_s": args.long_s,
        "short_jobs": args.short,
        "short_s": args.short_s,
        "step_s": worker.server.decoder.frame_samples / SR,
        "alone": alone,
        "mixed": mixed,
        "stall_ratio": round(mixed["max_gap_s"] / max(alone["max_gap_s"], 1e-9), 2),
    }
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.flush()
    os._exit(0)  # the in-process worker's loop and executor threads are not joined


if __name__ == "__main__":
    main()
