"""Real-time streaming benchmark: N concurrent streams of speech paced in real time over loopback.

    python bench/stream_bench.py --model tests/assets/tiny_parakeet.nemo --streams 1 4 8
    python bench/stream_bench.py --url ws://127.0.0.1:8765 --streams 1 4 8 16   # a running server

``--latency low balanced accurate`` runs each session latency setting (end-of-utterance silence
0.4 s, the server's STREAM_EOU_MS, 1.6 s) at every stream count.

Each stream sends two espeak-ng sentences separated by 1.5 s of silence, in 100 ms frames at real
time, then stops. Reported per stream count:
- end-of-speech -> final latency (p50/p95/p99): wall time from sending the last sample of the first
  sentence's speech to receiving its final (endpointing + queueing + compute);
- stop -> done latency;
- with an in-process server: decoding steps, streams decoded per step, compute per step, and the
  real-time factor (compute seconds per second of audio decoded);
and the largest stream count whose p95 end-of-speech latency stays under ``--target``.
Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import platform
import random
import threading
import time

import numpy as np

from _paths import ROOT, shown  # run as a script: puts the repository on sys.path

# isort: split
from client import ASRWebSocketClient, pcm16_bytes
from tools.test_model import synth

FRAME_S = 0.1
PAUSE_S = 1.5
FINAL_REACH_S = 0.6  # a final ending this close to the end of speech holds the sentence's last word


CLIP_POOL = 16  # distinct clips; client i streams clip i % CLIP_POOL (the content does not change cost)


@functools.cache
def make_stream_audio(i: int) -> tuple[np.ndarray, float, int]:
    """Two sentences with a pause; returns (audio, seconds where the first sentence's speech
    ends, words in the first sentence)."""
    rng = random.Random(9000 + i % CLIP_POOL)
    words = synth.load_words("en")
    a = synth.synthesize(synth.random_sentence(rng, words, 4, 8), "en", "en-us", rng, augment=False)
    b = synth.synthesize(synth.random_sentence(rng, words, 4, 8), "en", "en-gb", rng, augment=False)
    audio = np.concatenate([a.audio, np.zeros(int(PAUSE_S * 16000), np.float32), b.audio])
    return audio, a.speech_end, len(a.text.split())


async def one_stream(url: str, audio: np.ndarray, speech_end: float, first_words: int, latency: str) -> dict:
    pcm = pcm16_bytes(audio)
    step = int(16000 * FRAME_S) * 2
    out = {"eos_to_final": None, "stop_to_done": None}
    async with ASRWebSocketClient(url) as c:
        await c.start(16000, chunk_duration=0.0, latency=latency)
        t0 = time.monotonic()
        stop_at = {}
        heard = 0  # words in finals so far

        async def sender():
            for k, i in enumerate(range(0, len(pcm), step)):
                await c.send_audio(pcm[i : i + step])
                await asyncio.sleep(max(0.0, t0 + (k + 1) * FRAME_S - time.monotonic()))
            stop_at["t"] = time.monotonic()
            await c.stop()

        task = asyncio.create_task(sender())
        async for msg in c:
            now = time.monotonic()
            if msg.get("type") == "transcription" and msg["is_final"] and out["eos_to_final"] is None:
                # The final that completes the first sentence (a short end-of-utterance setting
                # may split it): its words are all in, or it ends near the end of the speech
                # (word timestamps end up to ~0.4 s before the audio does). The sample at
                # speech_end was sent at t0 + speech_end (real-time pacing).
                heard += len(msg.get("text", "").split())
                if heard >= first_words - 1 or msg.get("end", 0.0) >= speech_end - FINAL_REACH_S:
                    out["eos_to_final"] = now - (t0 + speech_end)
            elif msg.get("type") == "done":
                out["stop_to_done"] = now - stop_at["t"]
                out["text"] = msg["text"]
        await task
    return out


def pct(xs, q):
    return round(float(np.percentile(xs, q)), 3) if xs else None


async def run_level(url: str, n: int, decoder=None, latency: str = "balanced") -> dict:
    clips = [make_stream_audio(i) for i in range(n)]
    before = (decoder.steps, decoder.frames, decoder.step_seconds) if decoder else None
    res = await asyncio.gather(*(one_stream(url, a, e, w, latency) for a, e, w in clips))
    eos = [r["eos_to_final"] for r in res if r["eos_to_final"] is not None]
    row = {
        "latency": latency,
        "streams": n,
        "audio_s_per_stream": round(float(np.mean([len(c[0]) for c in clips])) / 16000, 2),
        "eos_to_final_p50": pct(eos, 50),
        "eos_to_final_p95": pct(eos, 95),
        "eos_to_final_p99": pct(eos, 99),
        "first_final_missing": n - len(eos),
        "stop_to_done_p50": pct([r["stop_to_done"] for r in res], 50),
        "words_per_s": round(
            sum(len(r.get("text", "").split()) for r in res) / (sum(len(c[0]) for c in clips) / 16000), 2
        ),
    }
    if decoder:
        steps, frames, secs = (x - y for x, y in zip((decoder.steps, decoder.frames, decoder.step_seconds), before))
        chunk = decoder.frame_samples / 16000
        row.update(
            {
                "steps": steps,
                "streams_per_step": round(frames / max(steps, 1), 2),
                "ms_per_step": round(1000 * secs / max(steps, 1), 1),
                "rtf": round(secs / max(frames * chunk, 1e-9), 4),
            }
        )
    return row


def start_local_server(model: str):
    """The product's server with the given model, in a thread with its own event loop."""
    import torch

    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine
    from parakeet_worker.engine.model_loader import load_model
    from parakeet_worker.serving.asr_server import ASRServer

    settings = dataclasses.replace(Settings.from_env(), model=model)
    engine = Engine(settings, model=load_model(model, cache_dir=settings.model_cache_dir))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box = {}

    async def start():
        box["server"] = ASRServer(settings, engine)
        listener = await box["server"].serve("127.0.0.1", 0)
        box["url"] = f"ws://127.0.0.1:{listener.port}"

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(300)
    device = (
        torch.cuda.get_device_name(0)
        if engine.device.type == "cuda"
        else f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"
    )
    return box["url"], box["server"].decoder, device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running server; default: start one in this process")
    ap.add_argument("--model", default=str(ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--target", type=float, default=2.0, help="p95 end-of-speech -> final latency target, s")
    ap.add_argument(
        "--latency",
        nargs="+",
        default=["balanced"],
        choices=["low", "balanced", "accurate"],
        help="the session's latency setting (each is run at every stream count)",
    )
    args = ap.parse_args()
    decoder, device = None, "remote server"
    url = args.url
    if url is None:
        url, decoder, device = start_local_server(args.model)
    rows = []
    for latency in args.latency:
        for n in args.streams:
            row = asyncio.run(run_level(url, n, decoder, latency))
            rows.append(row)
            print(json.dumps(row), flush=True)
    ok = [
        r["streams"]
        for r in rows
        if r["eos_to_final_p95"] is not None
        and r["eos_to_final_p95"] <= args.target
        and r["first_final_missing"] == 0
        and r["latency"] == args.latency[0]
    ]
    from parakeet_worker.config.settings import Settings

    st = Settings.from_env()
    print(
        json.dumps(
            {
                "device": device,
                "model": shown(args.model) if not args.url else args.url,
                "stream_config": {
                    "chunk_s": st.stream_step_s,
                    "left_s": st.stream_left_s,
                    "right_s": st.stream_right_s,
                    "eou_ms": st.stream_eou_ms,
                },
                "target_p95_s": args.target,
                "max_streams_within_target": max(ok) if ok else 0,
                "levels": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
