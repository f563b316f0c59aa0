"""The first GPU run: is the GPU/BF16 path correct, and the few figures the engine's defaults rest on.

    bash bench/gpu_check.sh [OUT_DIR] [PART ...]          # the one command (installs what is missing)
    python bench/gpu_check.py --out FILE [--parts correctness full] [--budget-s 330] [--cpu-smoke]
        [--full-model PATH]

Parts (docs/PERFORMANCE.md, "GPU check", says what to carry and how long each runs):
- ``correctness`` (tiny test model, ~1 min): versions (torch, CUDA, driver, NeMo); offline on the
  device in the engine's precision vs CPU fp32 (WER of each against the reference and between the
  two); the dtype the joint sees from the encoder and the preprocessor's buffer dtypes; streaming
  in that precision (no failed step, WER); offline output identical before and after streaming;
  CUDA-graph mode and the number of decoder re-captures over mixed batches after warmup; CUDA OOM
  recovery (injected).
- ``full`` (full-size random-weight model, ~3-4 min; built in memory and saved to ``--full-model``
  for the worker check and the real-OOM process, or loaded from there when present): peak memory
  of full attention at 5/10/20 min (fitted to a + K*T^2, the constant behind the full-attention
  limit), a real OOM recovered by local attention, attention switch time, batch RTFx at batch
  1/16/64 in bf16 vs fp32, streaming step time at 1/32/128 streams, torch.compile on/off (if time
  is left).

The sections that can poison the CUDA context (``oom_injected``, ``real_oom``: on the first H200
an injected OOM left an illegal memory access that failed every later section) run last, each in
its own process (``--section NAME``, its result merged back with ``process_s``, its start-up
included), so a crash there leaves every other figure standing.

Every section is guarded: a failure is recorded as {"error": ...} and the next section runs; a
section that would overrun ``--budget-s`` is recorded as skipped. The JSON file is rewritten after
every section, so a run stopped at its time limit still leaves what it measured.
``--cpu-smoke``: the same sections on CPU (bf16 forced) with the tiny model standing in for the
full one and small sizes; CUDA-only figures are {"skipped": "needs CUDA"} (tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _paths import ROOT  # run as a script: puts the repository on sys.path

TINY = ROOT / "tests" / "assets" / "tiny_parakeet.nemo"
# clips per correctness section and the mixed batch sizes of the CUDA-graph section (--cpu-smoke: fewer)
SIZES = {"clips": 8, "batches": (1, 3, 8, 2, 5)}
ISOLATED = {"oom_injected": 30, "real_oom": 75}  # sections run in their own process: ~seconds each needs
log = logging.getLogger("gpu_check")


def clips(n: int = 8, seed: int = 5150):
    """The speech every section uses (bench/prepare_audio.py speaks the same for a machine
    without espeak-ng)."""
    from tools.test_model import synth

    return synth.make_utterances("en", synth.train_voices("en"), n, seed, augment=False)


def tile(utts, seconds: float):
    """One signal of ``seconds`` made of the utterances one after another (for memory figures)."""
    import numpy as np

    base = np.concatenate([u.audio for u in utts])
    reps = int(seconds * 16000 // len(base)) + 1
    return np.tile(base, reps)[: int(seconds * 16000)]


def wer(refs, hyps) -> float:
    import jiwer

    return round(float(jiwer.wer(list(refs), [h or "<empty>" for h in hyps])), 4)


class Check:
    """Runs sections in order within a time budget and keeps the JSON file current."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.t0, self.budget = out, time.monotonic(), budget_s
        self.result: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "sections": {}}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def run(self, name: str, fn, *args, need_s: float = 0.0):
        if self.left() < need_s:
            res = {"skipped": f"time budget: {self.left():.0f} s left, needs ~{need_s:.0f} s"}
        else:
            t = time.monotonic()
            log.info("section %s (%.0f s left)", name, self.left())
            try:
                res = fn(*args)
            except Exception as exc:  # noqa: BLE001 - record and go on with the next section
                res = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
            if isinstance(res, dict):
                res.setdefault("seconds", round(time.monotonic() - t, 2))
        self.result["sections"][name] = res
        self.save()
        return res

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        tmp.replace(self.out)


# ---------------------------------------------------------------------------------------------
# correctness (tiny model)
def versions() -> dict:
    import torch

    from parakeet_worker.runtime import hardware

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "driver": hardware.nvidia_driver_version() or None,
        "cuda_available": torch.cuda.is_available(),
    }
    try:
        import nemo

        info["nemo"] = nemo.__version__
    except ImportError as exc:
        info["nemo"] = f"missing: {exc}"
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        free, total = torch.cuda.mem_get_info()
        info.update(
            {
                "gpu": torch.cuda.get_device_name(0),
                "capability": list(torch.cuda.get_device_capability(0)),
                "bf16_native": hardware.bf16_native(dev),
                "memory_total_gb": round(total / 1e9, 1),
                "memory_free_gb": round(free / 1e9, 1),
            }
        )
    return info


def joint_input_dtypes(model):
    """Record the dtype of every tensor that reaches the joint's encoder projection."""
    seen: set[str] = set()
    handle = model.joint.enc.register_forward_pre_hook(lambda _m, args: seen.add(str(args[0].dtype)))
    return seen, handle


def float_state(module) -> dict:
    return {
        name: t.detach().clone()
        for name, t in list(module.named_parameters()) + list(module.named_buffers())
        if t.is_floating_point()
    }


def same_state(a: dict, b: dict) -> list[str]:
    """Names whose dtype or values differ."""
    return [n for n in a if n not in b or a[n].dtype != b[n].dtype or not bool((a[n] == b[n]).all())]


def tiny_engine(device: str):
    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine
    from parakeet_worker.engine.model_loader import load_model

    model = load_model(str(TINY), device=device)
    precision = "bf16" if device == "cpu" else "auto"  # CPU smoke: force the GPU's precision path
    return Engine(
        Settings(
            model="tiny",
            device=device,
            precision=precision,
            max_batch_size=8,
            ws_max_sessions=2 if device == "cpu" else 8,
        ),
        model=model,
    )


def correctness(ctx: dict, device: str) -> dict:
    import torch

    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine
    from parakeet_worker.engine.model_loader import load_model

    utts = clips(SIZES["clips"])
    refs = [u.text for u in utts]
    cpu_model = load_model(str(TINY), device="cpu")
    cpu = Engine(Settings(model="tiny", device="cpu", precision="fp32", warmup=False), model=cpu_model)
    cpu_texts = [t.text for t in cpu.transcribe_batch([u.audio for u in utts])]
    del cpu, cpu_model
    engine = tiny_engine(device)
    model = engine.model
    ctx["engine"] = engine
    seen, handle = joint_input_dtypes(model)
    try:
        dev_texts = [t.text for t in engine.transcribe_batch([u.audio for u in utts])]
    finally:
        handle.remove()
    return {
        "device": str(engine.device),
        "dtype": str(engine.dtype),
        "encoder_dtype": str(next(model.encoder.parameters()).dtype),
        "joint_dtype": str(next(model.joint.parameters()).dtype),
        "joint_input_dtypes": sorted(seen),
        "preprocessor_buffers": {n: str(b.dtype) for n, b in model.preprocessor.named_buffers()},
        "wer_device_vs_ref": wer(refs, dev_texts),
        "wer_cpu_fp32_vs_ref": wer(refs, cpu_texts),
        "wer_device_vs_cpu_fp32": wer(cpu_texts, dev_texts),
        "warmup": getattr(engine, "warmup_report", None),
        "ok": torch.cuda.is_available() or device == "cpu",
    }


def run_streams(engine, audios):
    """Stream each signal at once (faster than real time); (final texts, failed streams, steps)."""
    from parakeet_worker.engine.streaming import StreamDecoder

    async def run():
        dec = StreamDecoder(engine)
        dec.start()
        texts = await dec.transcribe_whole(audios)
        await dec.stop()
        return [t or "" for t in texts], sum(t is None for t in texts), dec.steps

    return asyncio.run(run())


def streaming(ctx: dict) -> dict:
    engine = ctx["engine"]
    utts = clips(SIZES["clips"])[:4]
    before_state = float_state(engine.model.preprocessor)
    before = engine.transcribe_batch([u.audio for u in utts])
    seen, handle = joint_input_dtypes(engine.model)

    try:
        texts, failed, steps = run_streams(engine, [u.audio for u in utts])
    finally:
        handle.remove()
    after = engine.transcribe_batch([u.audio for u in utts])
    changed = same_state(before_state, float_state(engine.model.preprocessor))
    return {
        "failed_streams": failed,
        "steps": steps,
        "wer_vs_ref": wer([u.text for u in utts], texts),
        "joint_input_dtypes": sorted(seen),
        "preprocessor_changed": changed,
        "offline_identical_after_streaming": [dataclasses.asdict(a) for a in after]
        == [dataclasses.asdict(b) for b in before],
        "ok": failed == 0 and not changed,
    }


@contextlib.contextmanager
def count_recaptures(computers):
    """Count NeMo's CUDA-graph (re)initialisations of the given label-looping computers."""
    count = {"n": 0}
    saved = []
    for c in computers:
        orig = c._graph_reinitialize

        def wrapped(*a, _orig=orig, **k):
            count["n"] += 1
            return _orig(*a, **k)

        c._graph_reinitialize = wrapped
        saved.append((c, orig))
    try:
        yield count
    finally:
        for c, _orig in saved:
            vars(c).pop("_graph_reinitialize", None)


def cuda_graphs(ctx: dict) -> dict:
    import numpy as np

    engine = ctx["engine"]
    comps = engine.decoding_computers()
    utts = clips(SIZES["clips"])
    rng = np.random.default_rng(1)
    with count_recaptures(comps) as n:
        for size in SIZES["batches"]:  # mixed batch sizes and lengths, all within the warmed shapes
            pick = [utts[int(i)].audio for i in rng.integers(0, len(utts), size)]
            pick = [np.tile(a, int(rng.integers(1, 4))) for a in pick]
            engine.transcribe_batch(pick)
        offline = n["n"]
        for streams in sorted({1, engine.settings.ws_max_sessions, 3}):  # up to the warmed number of streams
            if streams <= engine.settings.ws_max_sessions:
                run_streams(engine, [utts[i % len(utts)].audio[:32000] for i in range(streams)])
    return {
        "modes": [str(getattr(c, "cuda_graphs_mode", None)) for c in comps],
        "recaptures_after_warmup": n["n"],
        "offline_recaptures": offline,
    }


def oom_injected(ctx: dict) -> dict:
    """A batch whose forward raises OOM once per multi-clip call: every clip still gets its text."""
    import torch

    engine = ctx["engine"]
    utts = clips(SIZES["clips"])[: SIZES["clips"] // 2]
    reference = [t.text for t in engine.transcribe_batch([u.audio for u in utts])]
    enc = engine.model.encoder
    orig = enc.forward
    raised = {"n": 0}

    def forward(*a, **k):
        sig = k.get("audio_signal", a[0] if a else None)
        if sig is not None and sig.shape[0] > 1:
            raised["n"] += 1
            raise torch.OutOfMemoryError("injected by bench/gpu_check.py")
        return orig(*a, **k)

    had = vars(enc).get("forward")
    enc.forward = forward
    try:
        texts = [t.text for t in engine.transcribe_batch([u.audio for u in utts])]
    finally:
        if had is None:
            del enc.forward
        else:
            enc.forward = had
    return {"ooms_raised": raised["n"], "recovered_identical": texts == reference, "stats": dict(engine.stats)}


# ---------------------------------------------------------------------------------------------
# full-size model
def full_engine(model, device: str, smoke: bool):
    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine

    return Engine(
        Settings(
            model="full",
            device=device,
            precision="bf16" if smoke else "auto",
            max_batch_size=64,
            warmup=False,
            ws_max_sessions=128,
        ),
        model=model,
    )


def full_model(path: Path | None, device: str) -> tuple:
    """The full-size random model and its description: loaded from ``path`` when it is there,
    else built (~35 s on an H200) and saved there (~20 s) for the worker check and real_oom."""
    if path is not None and path.exists():
        from parakeet_worker.engine.model_loader import load_model

        meta = path.with_suffix(".json")
        info = json.loads(meta.read_text()) if meta.exists() else {}
        return load_model(str(path), device=device), {**info, "loaded_from": str(path)}
    from tools.test_model import build_full

    model, info = build_full.build(5.0)
    if path is not None:
        t = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial.nemo")  # a run cut short leaves no half-written model
        model.save_to(str(tmp))
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
        info.update(saved_to=str(path), save_s=round(time.monotonic() - t, 1))
    return model, info


def build_full_model(ctx: dict, device: str, smoke: bool, path: Path | None = None) -> dict:
    import torch

    from parakeet_worker.engine.model_loader import load_model

    previous = ctx.pop("engine", None)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    t = time.monotonic()
    if smoke:  # the tiny model stands in (the one already loaded, if any)
        model = previous.model if previous is not None else load_model(str(TINY), device="cpu")
        info = {"stand_in": "tiny model (--cpu-smoke)"}
    else:
        model, info = full_model(path, device)
    model = model.to(device).eval()
    info["build_s"] = round(time.monotonic() - t - info.get("save_s", 0.0), 1)
    t = time.monotonic()
    ctx["full"] = full_engine(model, device, smoke)
    info["engine_s"] = round(time.monotonic() - t, 1)
    return info


def memory(ctx: dict, minutes: list[float]) -> dict:
    """Peak memory of one full-attention pass per duration, fitted to a + K*T^2 (hardware.py)."""
    import torch

    from parakeet_worker.runtime import hardware

    engine = ctx["full"]
    if engine.device.type != "cuda":
        return {"skipped": "needs CUDA"}
    utts = clips(8)
    rows = []
    for m in minutes:
        sig = tile(utts, m * 60)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        row = {"minutes": m, "frames": round(len(sig) / 16000 / engine.frame_seconds)}
        try:
            with engine.exclusive("full") as model:
                engine._model_pass(model, torch.from_numpy(sig)[None], torch.tensor([len(sig)]), [None])
            torch.cuda.synchronize()
            row["peak_gb"] = round((torch.cuda.max_memory_allocated() - base) / 1e9, 3)
        except torch.OutOfMemoryError:
            row["oom"] = True
        if row.get("oom"):
            engine.free_memory()
        row["seconds"] = round(time.perf_counter() - t, 3)
        rows.append(row)
    fitted = [r for r in rows if "peak_gb" in r]
    if len(fitted) < 2:
        return {"rows": rows, "bytes_per_frame2": None}
    (f0, p0), (f1, p1) = [(r["frames"], r["peak_gb"] * 1e9) for r in (fitted[0], fitted[-1])]
    k = (p1 - p0) / (f1**2 - f0**2) if f1 != f0 else 0.0
    free = hardware.free_device_memory(engine.device) or 0.0
    default_k = engine.settings.full_attention_bytes_per_frame2
    return {
        "rows": rows,
        "bytes_per_frame2": round(k, 2),
        "default_bytes_per_frame2": default_k,
        "free_gb": round(free / 1e9, 1),
        "limit_min_measured_k": round(hardware.full_attention_limit_s(free, engine.frame_seconds, k) / 60, 1),
        "limit_min_default_k": round(hardware.full_attention_limit_s(free, engine.frame_seconds, default_k) / 60, 1),
        "engine_limit_min": round(engine.full_attention_limit_s / 60, 1),
    }


def real_oom(ctx: dict) -> dict:
    """A clip whose full attention cannot fit: the engine must answer it with local attention."""
    from parakeet_worker.runtime import hardware

    engine = ctx["full"]
    if engine.device.type != "cuda":
        return {"skipped": "needs CUDA"}
    free = hardware.free_device_memory(engine.device)
    fits = hardware.full_attention_limit_s(
        free, engine.frame_seconds, engine.settings.full_attention_bytes_per_frame2, headroom=1.0
    )
    seconds = min(2.0 * fits, 3600.0)
    sig = tile(clips(8), seconds)
    before = dict(engine.stats)
    t = time.perf_counter()
    res = engine.transcribe_batch([sig], "full")[0]
    return {
        "audio_min": round(seconds / 60, 1),
        "result": type(res).__name__,
        "attention": getattr(res, "attention", None),
        "words": len(getattr(res, "words", []) or []),
        "seconds": round(time.perf_counter() - t, 2),
        "stats_delta": {k: v - before.get(k, 0) for k, v in engine.stats.items()},
    }


def attention_switch(ctx: dict) -> dict:
    import torch

    engine = ctx["full"]
    times = []
    for mode in ("local", "full", "local", "full"):
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with engine.exclusive(mode):
            pass
        times.append(round(time.perf_counter() - t, 4))
    return {"enter_and_leave_s": times, "first_is_build": True}


def batch_rtfx(ctx: dict, sizes: list[int], precisions: list[str]) -> dict:
    import torch

    from parakeet_worker.engine.engine import Engine

    engine = ctx["full"]
    utts = clips(8)
    pool = [u.audio for u in utts]
    rows = []
    for prec in precisions:
        if engine.device.type != "cuda" and prec != "fp32":
            prec_engine = engine  # CPU smoke: the bf16 engine as built
        else:
            prec_engine = Engine(dataclasses.replace(engine.settings, precision=prec), model=engine.model)
        for b in sizes:
            batch = [pool[i % len(pool)] for i in range(b)]
            audio_s = sum(len(a) for a in batch) / 16000
            prec_engine.transcribe_batch(batch)  # warm this shape
            best = float("inf")
            for _ in range(3):
                if engine.device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                prec_engine.transcribe_batch(batch)
                if engine.device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t)
            rows.append(
                {
                    "precision": prec,
                    "dtype": str(prec_engine.dtype),
                    "batch": b,
                    "rtfx": round(audio_s / best, 1),
                    "seconds": round(best, 4),
                }
            )
    # leave the shared model in the engine's own precision
    Engine(engine.settings, model=engine.model)
    return {"rows": rows}


def stream_steps(ctx: dict, counts: list[int], seconds: float) -> dict:
    from parakeet_worker.engine.stream_pipeline import StreamConfig, warm_streams
    from parakeet_worker.engine.streaming import StreamDecoder

    engine = ctx["full"]
    audio = tile(clips(8), seconds)
    pipeline = engine.stream_pipeline(StreamConfig.from_settings(engine.settings))  # takes the engine itself
    with engine.exclusive():  # its decoder graph at the largest count, as the engine's warmup does
        warm_streams(pipeline, max(counts))

    async def run(n: int):
        dec = StreamDecoder(engine)
        dec.start()
        streams = [dec.open() for _ in range(n)]
        for s in streams:
            dec.push(s, audio)
            dec.finish(s)
        failed = 0
        for s in streams:
            while True:
                up = await s.updates.get()
                if up is None:
                    failed += 1
                    break
                if up.last:
                    break
        await dec.stop()
        return {
            "streams": n,
            "steps": dec.steps,
            "frames_per_step": round(dec.frames / max(dec.steps, 1), 1),
            "step_ms": round(1000 * dec.step_seconds / max(dec.steps, 1), 2),
            "failed": failed,
        }

    return {"rows": [asyncio.run(run(n)) for n in counts]}


def compile_on_off(ctx: dict) -> dict:
    engine = ctx["full"]
    if engine.device.type != "cuda":
        return {"skipped": "needs CUDA"}
    import torch

    from parakeet_worker.engine.engine import Engine

    utts = clips(8)
    batch = [u.audio for u in utts]
    eager = Engine(dataclasses.replace(engine.settings, compile=False), model=engine.model)
    ref = [t.text for t in eager.transcribe_batch(batch)]

    def timeit(e):
        e.transcribe_batch(batch)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            e.transcribe_batch(batch)
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / 3

    eager_s = timeit(eager)
    t = time.perf_counter()
    compiled = Engine(
        dataclasses.replace(engine.settings, compile=True, warmup=True, warmup_streams=0), model=engine.model
    )
    warm_s = time.perf_counter() - t
    import torch._dynamo.utils as du

    before = dict(du.counters["stats"])
    comp_s = timeit(compiled)
    texts = [t.text for t in compiled.transcribe_batch(batch)]
    after = dict(du.counters["stats"])
    return {
        "eager_s": round(eager_s, 4),
        "compiled_s": round(comp_s, 4),
        "speedup": round(eager_s / comp_s, 3),
        "compile_and_warmup_s": round(warm_s, 1),
        "same_text_as_eager": texts == ref,
        "steady_state_compiles": after.get("unique_graphs", 0) - before.get("unique_graphs", 0),
    }


# ---------------------------------------------------------------------------------------------
# sections in their own process
def isolated(name: str, limit_s: float, smoke: bool, full_path: Path | None) -> dict:
    """Run one section as ``gpu_check.py --section NAME`` and return its result: a CUDA error or
    crash there dies with that process. Its log is replayed to stderr; a process that died without
    a result leaves its exit code and log tail."""
    fd, part = tempfile.mkstemp(prefix=f"gpu_check_{name}_", suffix=".json")
    os.close(fd)
    part = Path(part)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--section",
        name,
        "--out",
        str(part),
        "--budget-s",
        str(limit_s),
    ] + (["--cpu-smoke"] if smoke else [])
    if full_path is not None:
        cmd += ["--full-model", str(full_path)]
    t = time.monotonic()
    with tempfile.TemporaryFile("w+") as logf:
        try:
            rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, timeout=limit_s).returncode
        except subprocess.TimeoutExpired:
            rc = None
        logf.seek(0)
        log_text = logf.read()
    sys.stderr.write(log_text[-20000:])
    try:
        res = json.loads(part.read_text())["sections"][name] if part.stat().st_size else None
    except (OSError, ValueError, KeyError):
        res = None
    finally:
        part.unlink(missing_ok=True)
        part.with_suffix(".tmp").unlink(missing_ok=True)  # a child killed while writing
    if res is None:
        why = f"timed out after {limit_s:.0f} s" if rc is None else f"exited with {rc} and no result"
        res = {"error": f"section process {why}", "log_tail": log_text[-2000:]}
    res["process_s"] = round(time.monotonic() - t, 1)
    return res


def run_section(name: str, check: Check, device: str, smoke: bool, full_path: Path | None) -> None:
    """The child side of ``isolated``: set up what the section needs, then run it alone."""

    def section():
        t = time.monotonic()
        ctx: dict = {}
        if name == "oom_injected":
            ctx["engine"] = tiny_engine(device)
        else:
            if smoke:
                from parakeet_worker.engine.model_loader import load_model

                model = load_model(str(TINY), device=device)
            else:
                model, _info = full_model(full_path, device)
            ctx["full"] = full_engine(model.to(device).eval(), device, smoke)
        setup_s = time.monotonic() - t
        t = time.monotonic()
        res = {"oom_injected": oom_injected, "real_oom": real_oom}[name](ctx)
        res.setdefault("seconds", round(time.monotonic() - t, 2))
        res["setup_s"] = round(setup_s, 1)
        return res

    check.run(name, section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--parts", nargs="+", default=["correctness", "full"], choices=["correctness", "full"])
    ap.add_argument("--budget-s", type=float, default=330.0, help="stop starting sections after this")
    ap.add_argument("--cpu-smoke", action="store_true", help="CPU, bf16 forced, tiny sizes (tests)")
    ap.add_argument(
        "--full-model", type=Path, help="the full-size model's file: loaded when present, else built and saved there"
    )
    ap.add_argument("--section", choices=sorted(ISOLATED), help=argparse.SUPPRESS)  # isolated(): the child
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    import torch

    from parakeet_worker.runtime import lifecycle

    # a lost GPU in an in-process section must be recorded, not end the check (the worker part
    # sees the worker's own exit)
    lifecycle.LIFECYCLE.exit_on_overrun = False
    smoke = args.cpu_smoke
    if smoke:
        SIZES.update(clips=4, batches=(1, 3, 2))
    device = "cpu" if smoke else "cuda"
    check = Check(args.out, args.budget_s)
    if args.section:
        run_section(args.section, check, device, smoke, args.full_model)
        return
    check.result["mode"] = "cpu-smoke" if smoke else "gpu"
    info = check.run("versions", versions)
    if not smoke and not torch.cuda.is_available():
        check.result["fatal"] = "CUDA is not available: " + __import__("hardware").cuda_diagnosis()
        check.save()
        print(json.dumps(check.result["fatal"]))
        sys.exit(1)
    # figures first; the sections that can poison the CUDA context last, each in its own process
    risky = [n for n, part in (("oom_injected", "correctness"), ("real_oom", "full")) if part in args.parts]
    reserve = sum(ISOLATED[n] for n in risky)
    ctx: dict = {}
    if "correctness" in args.parts:
        check.run("offline", correctness, ctx, device)
        if "engine" in ctx:
            check.run("streaming", streaming, ctx)
            check.run("cuda_graphs", cuda_graphs, ctx)
    if "full" in args.parts:
        check.run("full_model", build_full_model, ctx, device, smoke, args.full_model, need_s=60)
        if "full" in ctx:
            check.run("memory", memory, ctx, [0.1, 0.2, 0.4] if smoke else [5, 10, 20], need_s=30)
            check.run("attention_switch", attention_switch, ctx, need_s=5)
            check.run("batch_rtfx", batch_rtfx, ctx, [1, 2] if smoke else [1, 16, 64], ["bf16", "fp32"], need_s=40)
            check.run(
                "stream_steps", stream_steps, ctx, [1, 2] if smoke else [1, 32, 128], 2.0 if smoke else 6.0, need_s=40
            )
            check.run("compile", compile_on_off, ctx, need_s=150 + reserve)
    ctx.clear()  # the section processes get the GPU memory this one held
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
    for name in risky:
        if name == "real_oom" and not torch.cuda.is_available():
            check.run(name, lambda: {"skipped": "needs CUDA"})  # not worth a process start on CPU
        elif name == "real_oom" and {"error", "skipped"} & set(check.result["sections"].get("full_model", {})):
            check.run(name, lambda: {"skipped": "no full-size model (see full_model)"})
        else:
            # a hung section process must not eat the next one's time
            limit = max(min(check.left(), 4 * ISOLATED[name]), 10.0)
            check.run(name, lambda n=name, s=limit: isolated(n, s, smoke, args.full_model), need_s=ISOLATED[name])
    check.result["versions"] = info
    check.save()
    errors = [k for k, v in check.result["sections"].items() if isinstance(v, dict) and "error" in v]
    print(json.dumps({"out": str(args.out), "elapsed_s": check.result["elapsed_s"], "errors": errors}))


if __name__ == "__main__":
    main()
