"""Batch benchmark: plain NeMo ``transcribe()`` vs our engine on the same audio, in one process.

    python bench/batch_bench.py                                   # tiny model, 32 sentences
    python bench/batch_bench.py --model ~/.cache/parakeet-test-models/full/parakeet_tdt_v3_random.nemo --n 16

Modes, all on the same clips (espeak-ng sentences, decoded once):
- ``nemo_one_by_one``: ``model.transcribe([clip], timestamps=True)`` per clip
- ``nemo_batched``: one ``model.transcribe(clips, batch_size=n, timestamps=True)``
- ``engine_single``: ``Engine.transcribe_batch([clip])`` per clip
- ``engine_concurrent``: every clip submitted at once through the dynamic batcher
- ``handler_concurrent``: every clip as a base64 WAV job through ``rp_handler.handler`` at once
  (base64 + decoding + formatting included)
- ``handler_no_expecting``: the same without the batcher waiting for jobs still decoding
  (an ablation of ``DynamicBatcher.request_arriving``)
Reported: RTFx (audio seconds / wall seconds), per-job latency p50/p95 for the concurrent modes,
the emission rate (tokens/s of output), and ratios to plain NeMo. JSON on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import resource
import time

import numpy as np

from _paths import ROOT, shown  # run as a script: puts the repository on sys.path


def clips_for(n: int, seed: int) -> list:
    from tools.test_model import synth

    return synth.make_utterances("en", synth.train_voices("en"), n, seed)


@contextlib.contextmanager
def plain_nemo(model):
    """NeMo exactly as shipped: without the engine's leaner subsampling masks (asr_engine)."""
    from nemo.collections.asr.parts.submodules.subsampling import MaskedConvSequential

    mods = [m for m in model.modules() if isinstance(m, MaskedConvSequential)]
    saved = [vars(m).pop("forward", None) for m in mods]
    try:
        yield model
    finally:
        for m, f in zip(mods, saved):
            if f is not None:
                m.forward = f


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


async def _gather_timed(coros):
    async def one(c):
        t0 = time.perf_counter()
        r = await c
        return r, time.perf_counter() - t0

    return await asyncio.gather(*(one(c) for c in coros))


def wav_b64(audio: np.ndarray) -> str:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))
    ap.add_argument("--n", type=int, default=32, help="clips (and concurrent jobs)")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--skip", nargs="*", default=[], help="modes to leave out")
    args = ap.parse_args()
    os.environ["PARAKEET_MODEL"] = args.model
    import jiwer
    import torch

    import rp_handler
    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine
    from parakeet_worker.engine.model_loader import load_model

    clips = clips_for(args.n, args.seed)
    audio = [u.audio for u in clips]
    refs = [u.text for u in clips]
    total_s = sum(len(a) for a in audio) / 16000
    settings = Settings.from_env()
    model = load_model(args.model, cache_dir=settings.model_cache_dir)
    settings = type(settings)(**{**settings.__dict__, "model": args.model, "max_batch_size": max(args.n, 1)})
    engine = Engine(settings, model=model)
    rp_handler._engine = engine  # the handler uses this very engine
    tok = model.tokenizer
    rows = {}

    def record(name, seconds, texts, latencies=None):
        tokens = sum(len(tok.text_to_ids(t)) for t in texts)
        row = {
            "seconds": round(seconds, 3),
            "rtfx": round(total_s / seconds, 1),
            "tokens_per_s": round(tokens / total_s, 2),
            "wer": round(jiwer.wer(refs, list(texts)), 4),
        }
        if latencies:
            row.update(
                {
                    "latency_p50": round(float(np.percentile(latencies, 50)), 3),
                    "latency_p95": round(float(np.percentile(latencies, 95)), 3),
                }
            )
        row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        rows[name] = row
        print(f"{name:20s} {row}", flush=True)

    engine.transcribe_batch(audio[:2])  # both paths warm
    with plain_nemo(model):
        model.transcribe(audio[:2], timestamps=True, verbose=False)
        model.eval()

        if "nemo_one_by_one" not in args.skip:

            def one_by_one():
                out = [model.transcribe([a], batch_size=1, timestamps=True, verbose=False)[0].text for a in audio]
                model.eval()
                return out

            texts, sec = timed(one_by_one)
            record("nemo_one_by_one", sec, texts)
        if "nemo_batched" not in args.skip:
            hyps, sec = timed(lambda: model.transcribe(audio, batch_size=args.n, timestamps=True, verbose=False))
            model.eval()
            record("nemo_batched", sec, [h.text for h in hyps])
    if "engine_single" not in args.skip:
        texts, sec = timed(lambda: [engine.transcribe_batch([a])[0].text for a in audio])
        record("engine_single", sec, texts)
    if "engine_concurrent" not in args.skip:
        res, sec = timed(lambda: asyncio.run(_gather_timed([engine.transcribe(a) for a in audio])))
        record("engine_concurrent", sec, [r.text for r, _ in res], [t for _, t in res])
    jobs = [{"id": f"b{i}", "input": {"audio_base64": wav_b64(a)}} for i, a in enumerate(audio)]
    if "handler_concurrent" not in args.skip:
        res, sec = timed(lambda: asyncio.run(_gather_timed([rp_handler.handler(j) for j in jobs])))
        record("handler_concurrent", sec, [r.get("text", "") for r, _ in res], [t for _, t in res])
    if "handler_no_expecting" not in args.skip:
        # ablation: the batcher does not wait for jobs still decoding (DynamicBatcher.request_arriving)
        engine.request_arriving = contextlib.nullcontext
        res, sec = timed(lambda: asyncio.run(_gather_timed([rp_handler.handler(j) for j in jobs])))
        del engine.request_arriving
        record("handler_no_expecting", sec, [r.get("text", "") for r, _ in res], [t for _, t in res])

    ratios = {}
    for ours, base in (
        ("engine_single", "nemo_one_by_one"),
        ("engine_concurrent", "nemo_one_by_one"),
        ("engine_concurrent", "nemo_batched"),
        ("handler_concurrent", "nemo_one_by_one"),
        ("handler_concurrent", "handler_no_expecting"),
    ):
        if ours in rows and base in rows:
            ratios[f"{ours}/{base}"] = round(rows[base]["seconds"] / rows[ours]["seconds"], 2)
    device = (
        torch.cuda.get_device_name(0)
        if engine.device.type == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    print(
        json.dumps(
            {
                "device": device,
                "model": shown(args.model),
                "clips": args.n,
                "audio_seconds": round(total_s, 1),
                "modes": rows,
                "speedup": ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
