"""Where a batch job's time goes: cProfile over the RunPod handler, split into stages.

    python bench/profile_bench.py                 # tiny model, 32 concurrent base64 WAV jobs
    python bench/profile_bench.py --model FULL.nemo --n 8 --top 25

The jobs run concurrently through ``rp_handler.handler`` as in production, except that the
engine's worker threads run inline (``scheduling.INLINE`` for this run), so one
profiler sees everything. Stages are the cumulative time of the functions that own them:
base64 decoding, audio decoding (soundfile/ffmpeg + resampling), the mel preprocessor, the
encoder, TDT decoding (with confidence), timestamps and our Transcript building, output
formatting; "other" is the rest (asyncio, batching, Python glue). A JSON line ends the output.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import time

from _paths import ROOT, shown  # run as a script: puts the repository on sys.path

# (stage, file suffix, function name): cumulative time of that function
STAGES = [
    ("base64", "audio/formats.py", "decode_base64"),
    ("audio_decode", "audio/decode.py", "decode_audio"),
    ("preprocessor", "audio_preprocessing.py", "forward"),
    ("encoder", "conformer_encoder.py", "forward"),
    ("decoding", "rnnt_decoding.py", "rnnt_decoder_predictions_tensor"),
    ("timestamps", "timestamp_utils.py", "process_timestamp_outputs"),
    ("transcript", "engine/transcript.py", "from_hypothesis"),
    ("formatting", "serving/formatting.py", "job_output"),
]


def stage_times(stats: pstats.Stats) -> dict:
    out: dict[str, float] = {}
    for (file, _, name), (_, _, _, cum, _) in stats.stats.items():
        for stage, suffix, fn in STAGES:
            if name == fn and file.endswith(suffix):
                out[stage] = max(out.get(stage, 0.0), cum)  # the outermost call holds the total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--top", type=int, default=0, help="also print the N most expensive functions")
    args = ap.parse_args()
    os.environ["PARAKEET_MODEL"] = args.model
    import dataclasses

    import rp_handler
    from batch_bench import clips_for, wav_b64
    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine
    from parakeet_worker.runtime import scheduling

    audio = [u.audio for u in clips_for(args.n, 4242)]
    audio_s = sum(len(a) for a in audio) / 16000
    engine = Engine(dataclasses.replace(Settings.from_env(), model=args.model, max_batch_size=max(args.n, 1)))
    rp_handler._engine = engine
    tok = engine.model.tokenizer
    jobs = [{"id": f"p{i}", "input": {"audio_base64": wav_b64(a)}} for i, a in enumerate(audio)]

    async def inline(fn, *a, **k):  # the model runs in this thread, where the profiler is
        return fn(*a, **k)

    async def run_all():
        return await asyncio.gather(*(rp_handler.handler(j) for j in jobs))

    asyncio.run(run_all())  # warm
    real_to_thread = asyncio.to_thread
    asyncio.to_thread = inline
    scheduling.INLINE = True
    prof = cProfile.Profile()
    try:
        t0 = time.perf_counter()
        prof.enable()
        res = asyncio.run(run_all())
        prof.disable()
        total = time.perf_counter() - t0
    finally:
        asyncio.to_thread = real_to_thread
        scheduling.INLINE = False
    stats = pstats.Stats(prof)
    stages = stage_times(stats)
    stages["other"] = max(0.0, total - sum(stages.values()))
    tokens = sum(len(tok.text_to_ids(r.get("text", ""))) for r in res)
    print(
        f"{args.n} jobs, {audio_s:.1f} s of audio, {total:.3f} s under the profiler, "
        f"{tokens / audio_s:.2f} tokens/s emitted"
    )
    for k, v in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {k:13s} {v:7.3f} s  {100 * v / total:5.1f}%")
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)
    print(
        json.dumps(
            {
                "model": shown(args.model),
                "jobs": args.n,
                "audio_seconds": round(audio_s, 1),
                "profiled_seconds": round(total, 3),
                "tokens_per_s": round(tokens / audio_s, 2),
                "stages": {k: round(v, 4) for k, v in stages.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
