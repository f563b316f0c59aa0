"""The engine's speed levers, each measured on/off on the same clips in one process.

    python bench/gpu_levers.py                       # tiny model; on CPU only SDPA and batch size apply
    python bench/gpu_levers.py --model ~/.cache/parakeet-test-models/full/parakeet_tdt_v3_random.nemo

Levers (settings in settings.py; the README lists their variables):
- ``precision``: FP32 vs BF16 encoder (CUDA only; the mel front end stays FP32);
- ``sdpa``: PyTorch scaled-dot-product attention (flash / memory-efficient kernels) vs NeMo's
  own attention arithmetic;
- ``cuda_graphs``: NeMo's CUDA-graph TDT greedy decoder vs the plain label-looping loop (CUDA only);
- ``compile``: ``torch.compile`` of the encoder vs eager (CUDA only; kept off by default unless
  this shows a gain);
- ``lean_masks``: the engine's subsampling forward (fewer padding-mask passes) vs NeMo's;
- ``batch``: RTFx for batch sizes 1..64 (the dynamic batcher's MAX_BATCH_SIZE).
Each measurement: one warm-up pass, then ``--repeats`` timed passes over all clips in batches of
the given size; the best pass counts. RTFx = audio seconds / wall seconds. The emission rate of
the output (tokens per second of audio) is printed with every row. JSON on the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time

from _paths import ROOT, shown  # run as a script: puts the repository on sys.path


def measure(engine, clips, batch: int, repeats: int) -> dict:
    import torch

    cuda = engine.device.type == "cuda"
    audio_s = sum(len(c) for c in clips) / 16000

    def one_pass():
        texts = []
        for k in range(0, len(clips), batch):
            texts += [t.text for t in engine.transcribe_batch(clips[k : k + batch])]
        if cuda:
            torch.cuda.synchronize()
        return texts

    one_pass()  # warm-up: kernels, graphs, compile, allocator
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        texts = one_pass()
        best = min(best, time.perf_counter() - t0)
    tokens = sum(len(engine.model.tokenizer.text_to_ids(t)) for t in texts)
    row = {
        "batch": batch,
        "seconds": round(best, 4),
        "rtfx": round(audio_s / best, 1),
        "tokens_per_s": round(tokens / audio_s, 2),
    }
    if cuda:
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))
    ap.add_argument("--n", type=int, default=32, help="distinct clips (tiled up to the largest batch)")
    ap.add_argument("--batch", type=int, default=16, help="batch size for the on/off levers")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--levers", nargs="+", default=["precision", "sdpa", "cuda_graphs", "lean_masks", "batch", "compile"]
    )
    args = ap.parse_args()
    import torch

    from batch_bench import clips_for
    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine
    from parakeet_worker.engine.model_loader import load_model

    model = load_model(args.model, cache_dir=Settings.from_env().model_cache_dir)
    cuda = next(model.parameters()).device.type == "cuda"
    clips = [u.audio for u in clips_for(args.n, 4242)]
    base = dataclasses.replace(Settings.from_env(), model=args.model, compile=False, warmup=False)

    def engine(**changes):
        return Engine(dataclasses.replace(base, **changes), model=model)

    levers: dict = {}

    def compare(name, off: dict, on: dict, cuda_only: bool = False, setup=None):
        if name not in args.levers:
            return
        if cuda_only and not cuda:
            levers[name] = {"skipped": "needs CUDA"}
            print(f"{name:12s} skipped: needs CUDA", flush=True)
            return
        rows = {}
        for label, changes in (("off", off), ("on", on)):
            eng = engine(**changes)
            if setup:
                setup(eng, label == "on")
            rows[label] = measure(eng, clips, args.batch, args.repeats)
        rows["speedup_on_vs_off"] = round(rows["off"]["seconds"] / rows["on"]["seconds"], 3)
        levers[name] = rows
        print(f"{name:12s} {json.dumps(rows)}", flush=True)

    compare("precision", {"precision": "fp32"}, {"precision": "bf16"}, cuda_only=True)
    compare("sdpa", {}, {}, setup=lambda eng, on: eng._use_sdpa(on))
    compare("cuda_graphs", {"cuda_graphs": False}, {"cuda_graphs": True}, cuda_only=True)

    def lean_masks(eng, on):  # off: NeMo's own subsampling forward
        from nemo.collections.asr.parts.submodules.subsampling import MaskedConvSequential

        from parakeet_worker.engine.nemo_patches import lean_subsampling_masks

        for mod in eng.model.modules():
            if isinstance(mod, MaskedConvSequential):
                vars(mod).pop("forward", None)
        if on:
            lean_subsampling_masks(eng.model)

    compare("lean_masks", {}, {}, setup=lean_masks)

    if "batch" in args.levers:
        eng = engine()
        sweep = []
        for b in args.batch_sizes:
            tiled = (clips * (b // len(clips) + 1))[: max(b, len(clips))]
            sweep.append(measure(eng, tiled, b, args.repeats))
            print(f"batch {b:4d}: {json.dumps(sweep[-1])}", flush=True)
        levers["batch"] = sweep

    # Last: compiling rewrites the encoder's forward on this model object.
    def compiled(eng, on):
        if on:
            eng.model.encoder.forward = torch.compile(eng.model.encoder.forward, dynamic=True)

    if "compile" in args.levers:
        try:
            compare("compile", {}, {}, cuda_only=True, setup=compiled)
        except Exception as exc:  # noqa: BLE001 - a compiler failure is a result, not a crash
            levers["compile"] = {"failed": f"{type(exc).__name__}: {exc}"[:500]}
            print("compile failed:", levers["compile"]["failed"], flush=True)
        finally:
            vars(model.encoder).pop("forward", None)

    device = torch.cuda.get_device_name(0) if cuda else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(
        json.dumps(
            {
                "device": device,
                "model": shown(args.model),
                "clips": len(clips),
                "audio_seconds": round(sum(len(c) for c in clips) / 16000, 1),
                "levers": levers,
            }
        )
    )


if __name__ == "__main__":
    main()
