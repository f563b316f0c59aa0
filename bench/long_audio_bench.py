"""Long-audio benchmark: 1, 2 and 3 hours through local attention and through chunking.

    python bench/long_audio_bench.py                      # tiny model, 1/2/3 h, both paths
    python bench/long_audio_bench.py --hours 0.1 --modes chunked --progress-hours 0   # smoke

The audio is espeak-ng sentences with random pauses (0.2-1.5 s) laid end to end, so every word
of the reference and every sentence's place is known. Each (duration, path) runs in a fresh
process, so peak memory is that run's own. Reported per run:
- wall time and RTFx of ``Engine.transcribe`` (model loaded and warm before the clock starts);
- memory: RSS before the call (model + signal), peak RSS during it (sampled every 20 ms), and
  the difference, the working memory, which must not grow with the duration;
- seams: in every overlap (up to 60), the words both windows heard must appear exactly once in
  the merged transcript (else lost or doubled by the merge); words only one window heard are
  counted apart, with how many the merge kept;
- overall WER, WER around seams vs mid-window, and the emission rate (tokens/s) of the output.
Then ``progress_update`` overhead: the same 1 h job with no progress, with the handler's
throttled progress, and with an update after every window, posted by the RunPod SDK to a
loopback server standing in for RunPod. JSON on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time

import numpy as np

from _paths import ROOT, shown  # run as a script: puts the repository on sys.path

TINY = ROOT / "tests" / "assets" / "tiny_parakeet.nemo"


# ---------------------------------------------------------------------------------------------
# the audio
def long_signal(hours: float, seed: int = 7) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Sentences from a pool of 60, with pauses, up to ``hours``; returns the signal and each
    sentence's (start, end, text). Filled in place: no second copy of hours of audio."""
    from tools.test_model import synth

    # Clean, level-matched speech: the tiny test model learnt single sentences, and its
    # per-clip feature normalisation drifts on minutes that mix loud and quiet augmented voices.
    pool = synth.make_utterances("en", synth.train_voices("en"), 60, seed, augment=False)
    for u in pool:
        u.audio = (u.audio * (0.05 / max(float(np.sqrt(np.mean(u.audio**2))), 1e-4))).astype(np.float32)
    rng = random.Random(seed)
    plan, t = [], 0
    target = int(hours * 3600 * 16000)
    while t < target:
        u = pool[rng.randrange(len(pool))]
        gap = int(rng.uniform(0.2, 1.5) * 16000)
        plan.append((t + gap, u))
        t += gap + len(u.audio)
    signal = np.random.default_rng(seed).normal(0, 0.001, t).astype(np.float32)  # a room's noise floor
    sentences = []
    for start, u in plan:
        signal[start : start + len(u.audio)] = u.audio
        sentences.append((start / 16000, (start + len(u.audio)) / 16000, u.text))
    return signal, sentences


def _regions(points, sentences, duration) -> list[tuple[float, float, str]]:
    """For each (lo, hi) interval: the whole sentences touching it, from the middle of the pause
    before the first to the middle of the pause after the last, with their reference text."""
    starts = np.array([s for s, _, _ in sentences])
    ends = np.array([e for _, e, _ in sentences])
    out = []
    for lo, hi in points:
        ks = np.nonzero((ends > lo - 1.0) & (starts < hi + 1.0))[0]
        if ks.size == 0:
            continue
        a, b = ks[0], ks[-1]
        left = (ends[a - 1] + starts[a]) / 2 if a > 0 else 0.0
        right = (ends[b] + starts[b + 1]) / 2 if b + 1 < len(sentences) else duration
        out.append((left, right, " ".join(sentences[k][2] for k in range(a, b + 1))))
    return out


def seam_report(signal, spans, sentences, t, max_seams: int = 60) -> dict:
    """What the merge did at window seams (up to ``max_seams``, evenly spread). For each seam the
    two windows' own transcripts (``t.parts``) are compared in the overlap: a word both heard
    (same word, start within 0.16 s) must appear exactly once in the merged transcript, else the
    merge lost or doubled it. Words only one window heard are the model's own disagreements (its
    context differs); we count how many the merge kept. WER against the reference is given for
    the sentences around the seams and, as a control, for sentences in the middle of windows."""
    import jiwer

    duration = len(signal) / 16000
    pick = np.linspace(0, len(spans) - 2, min(max_seams, len(spans) - 1)).astype(int) if len(spans) > 1 else []
    words = t.words
    agreed = lost = doubled = one_sided = one_sided_kept = 0
    for i in pick:
        (a0, a1), (b0, _) = spans[i], spans[i + 1]
        left, right = t.parts[i], t.parts[i + 1]
        lw = [(w.word, a0 + w.start) for w in left.words if b0 <= a0 + w.start < a1]
        rw = [(w.word, b0 + w.start) for w in right.words if b0 <= b0 + w.start < a1]
        merged = [(w.word, w.start) for w in words if b0 - 0.5 <= w.start < a1 + 0.5]

        def count(word, start, pool):
            return sum(1 for x, t in pool if x == word and abs(t - start) <= 0.16)

        for word, start in lw:
            n = count(word, start, merged)
            if count(word, start, rw):
                agreed += 1
                lost += n == 0
                doubled += n > 1
            else:
                one_sided += 1
                one_sided_kept += n > 0
        for word, start in rw:
            if not count(word, start, lw):
                one_sided += 1
                one_sided_kept += count(word, start, merged) > 0

    def wer_around(points):
        regions = _regions(points, sentences, duration)
        if not regions:
            return None
        mids = np.array([(w.start + w.end) / 2 for w in words])
        hyps = [" ".join(words[k].word for k in np.nonzero((mids >= a) & (mids < b))[0]) for a, b, _ in regions]
        return round(jiwer.wer([r for _, _, r in regions], hyps), 4)

    seams = [(spans[i + 1][0], spans[i][1]) for i in pick]
    middles = [((a + b) / 2 - 1.0, (a + b) / 2 + 1.0) for a, b in (spans[i] for i in pick)]
    return {
        "seams": len(spans) - 1,
        "seams_checked": len(pick),
        "words_both_windows_heard": agreed,
        "lost_by_merge": lost,
        "doubled_by_merge": doubled,
        "words_one_window_heard": one_sided,
        "of_which_kept": one_sided_kept,
        "wer_at_seams": wer_around(seams),
        "wer_mid_window": wer_around(middles),
    }


# ---------------------------------------------------------------------------------------------
# memory
def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRSS:
    """Highest RSS seen while the block runs (sampled every 20 ms in a thread)."""

    def __enter__(self):
        self.peak, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def peak_cuda_mb(engine) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if engine.device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------
# one run, in its own process
def _engine(model_path: str):
    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine

    s = Settings.from_env()
    return Engine(type(s)(**{**s.__dict__, "model": model_path}))


def child_run(model_path: str, hours: float, mode: str) -> dict:
    import jiwer
    import torch

    from parakeet_worker.engine.windows import LOCAL_WINDOW_OVERLAP_S, window_spans

    engine = _engine(model_path)
    signal, sentences = long_signal(hours)
    duration = len(signal) / 16000
    local = mode == "local"
    spans = (
        window_spans(duration, engine.settings.local_attention_window_s, LOCAL_WINDOW_OVERLAP_S)
        if local
        else window_spans(duration, 30.0)
    )
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = rss_mb()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        t = asyncio.run(engine.transcribe(signal, use_local_attention=local, chunk_long_audio=not local))
        sec = time.perf_counter() - t0
    ref = " ".join(s for _, _, s in sentences)
    tokens = len(engine.model.tokenizer.text_to_ids(t.text))
    return {
        "mode": mode,
        "hours": hours,
        "audio_seconds": round(duration, 1),
        "windows": t.chunks,
        "window_s": spans[0][1],
        "seconds": round(sec, 2),
        "rtfx": round(duration / sec, 1),
        "tokens_per_s": round(tokens / duration, 2),
        "wer": round(jiwer.wer(ref, t.text), 4),
        "ref_words": len(ref.split()),
        "hyp_words": len(t.words),
        "signal_mb": round(signal.nbytes / 2**20, 1),
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(mem.peak, 1),
        "working_mb": round(mem.peak - before, 1),
        "peak_cuda_mb": peak_cuda_mb(engine),
        **seam_report(signal, spans, sentences, t),
    }


def child_progress(model_path: str, hours: float) -> dict:
    """The handler's ProgressReporter posting through the SDK to a loopback stand-in for RunPod."""
    from aiohttp import web

    posts = []

    async def on_post(request):
        posts.append(await request.text())
        return web.Response(text="ok")

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/progress", on_post)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    threading.Thread(target=loop.run_forever, daemon=True).start()
    # the SDK reads the URL when imported, and Settings when built: set it first
    os.environ["RUNPOD_WEBHOOK_POST_OUTPUT"] = f"http://127.0.0.1:{port}/progress?id=$ID"
    from parakeet_worker.config.settings import Settings
    from parakeet_worker.serving.progress import PROGRESS_INTERVAL_S, ProgressReporter, post_progress

    send = functools.partial(post_progress, Settings.from_env())  # as rp_handler posts them
    engine = _engine(model_path)
    signal, _ = long_signal(hours)
    duration = len(signal) / 16000
    job = {"id": "long-audio-bench"}
    rows = {}
    for name, interval in (
        ("none", None),
        ("throttled", PROGRESS_INTERVAL_S),
        ("every_window", 0.0),
        ("none_again", None),
    ):
        posts.clear()
        reporter = None
        if interval is not None:
            reporter = ProgressReporter(job, duration, send, interval_s=interval)
        t0 = time.perf_counter()
        asyncio.run(engine.transcribe(signal, chunk_long_audio=True, on_progress=reporter))
        sec = time.perf_counter() - t0
        time.sleep(1.0)  # let the SDK's posting threads finish
        rows[name] = {
            "seconds": round(sec, 2),
            "updates": reporter.sent if reporter else 0,
            "posts_received": len(posts),
        }
        print(name, rows[name], file=sys.stderr, flush=True)
    base = (rows["none"]["seconds"] + rows["none_again"]["seconds"]) / 2
    for name in ("throttled", "every_window"):
        rows[name]["overhead_pct"] = round(100 * (rows[name]["seconds"] / base - 1), 2)
    return {"hours": hours, "audio_seconds": round(duration, 1), "runs": rows}


# ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(TINY))
    ap.add_argument("--hours", type=float, nargs="+", default=[1, 2, 3])
    ap.add_argument("--modes", nargs="+", default=["local", "chunked"], choices=["local", "chunked"])
    ap.add_argument("--progress-hours", type=float, default=1.0, help="0 = skip the progress runs")
    ap.add_argument("--child", choices=["run", "progress"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "run":
        print(json.dumps(child_run(args.model, args.hours[0], args.modes[0])))
        return
    if args.child == "progress":
        print(json.dumps(child_progress(args.model, args.progress_hours)))
        return

    def child(*extra):
        cmd = [sys.executable, __file__, "--model", args.model, *extra]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])

    runs = []
    for mode in args.modes:
        for hours in args.hours:
            r = child("--child", "run", "--hours", str(hours), "--modes", mode)
            print(
                f"{mode:8s} {hours:4.1f} h: {r['seconds']:8.1f} s  RTFx {r['rtfx']:7.1f}  "
                f"working {r['working_mb']:7.1f} MB (signal {r['signal_mb']} MB, peak {r['peak_rss_mb']} MB)  "
                f"WER {r['wer']:.3f} (at seams {r['wer_at_seams']}, mid-window {r['wer_mid_window']})  "
                f"seams {r['seams']}: lost {r['lost_by_merge']} doubled {r['doubled_by_merge']} "
                f"of {r['words_both_windows_heard']} words  "
                f"{r['tokens_per_s']} tokens/s",
                flush=True,
            )
            runs.append(r)
    progress = (
        child("--child", "progress", "--progress-hours", str(args.progress_hours)) if args.progress_hours > 0 else None
    )
    if progress:
        print("progress_update:", json.dumps(progress["runs"]), flush=True)
    import torch

    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    print(json.dumps({"device": device, "model": shown(args.model), "runs": runs, "progress": progress}))


if __name__ == "__main__":
    main()
