"""Hotwords: what per-request boosting costs and what it buys, on one process's model.

    python bench/hotword_bench.py                          # tiny model: cost and accuracy
    python bench/hotword_bench.py --quick                  # a smoke run (tests/test_bench_smoke.py)
    python bench/hotword_bench.py --model path/to/model.nemo --skip-accuracy

Cost, as ratios of runs in this one process (repeats interleaved, the minimum of each kept), in
CPU seconds of this process (``time.process_time``: on a shared machine, wall time mostly measures
the neighbours; on a GPU the figures are wall time):
- batch decoding: the TDT decoding call alone (encoder output computed once) and the whole pass
  (preprocessor + encoder + decoding) for ``--batch`` utterances, each with 0 / 10 / 100 / 1000
  hotwords, against the same engine with no hotwords;
- mixing: one list shared by the whole batch, a different list per utterance, half with a list and
  half without (NeMo's biasing multi-model takes one tree per utterance, so nothing is regrouped);
- tree building: the first request with a new list (built, cached) and a repeat (cached);
- streaming: compute per decoding step for ``--streams`` streams, each with 0 / 10 / 100 / 1000.
Accuracy, on fresh sentences in voices the tiny model never heard (seeds not used by the tests or
for choosing the default boost): the fix rate (wrong sentences whose missed words all come back
when those words are the hotwords) and the harm rate (right sentences changed by 10 unrelated
hotwords), batch and streaming. JSON on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import time

from _paths import ROOT, shown  # run as a script: puts the repository on sys.path

SIZES = (0, 10, 100, 1000)


def cost_clips(n: int) -> list:
    from tools.test_model import synth

    return [u.audio for u in synth.make_utterances("en", synth.train_voices("en"), n, 31)]


def accuracy_sentences(n: int, seed: int) -> list:
    from tools.test_model import synth

    return synth.make_utterances("en", synth.HELD_OUT["en"], n, seed)


def phrase_lists(n: int, count: int, seed: int) -> list[tuple[str, ...]]:
    """``count`` different lists of ``n`` phrases from the test model's English words (two-word
    phrases once the 493 words run out), so no two utterances share a tree."""
    from tools.test_model import synth

    words = synth.load_words("en")
    out = []
    for k in range(count):
        rng = random.Random(seed * 1000 + k)
        pool = (
            words if n <= len(words) else [f"{a} {b}" for a, b in zip(rng.choices(words, k=n), rng.choices(words, k=n))]
        )
        out.append(tuple(rng.sample(pool, n)))
    return out


def clock(cuda: bool):
    """Wall time on a GPU (synchronized); this process's CPU time on a CPU machine."""
    if not cuda:
        return time.process_time
    import torch

    def wall():
        torch.cuda.synchronize()
        return time.perf_counter()

    return wall


def best_of(repeats: int, runs: dict, now) -> dict:
    """Run every case once per round (interleaved: drifts of a shared machine hit all alike) and
    keep each case's fastest round."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = now()
            fn()
            best[name] = min(best[name], now() - t0)
    return best


def batch_cost(engine, clips, repeats: int) -> dict:
    import torch

    from parakeet_worker.engine.hotwords import Boosting

    b = len(clips)
    trees = {n: [engine.hotword_trees.get(p) for p in phrase_lists(n, b, n)] for n in SIZES if n}
    cases = {"none": [None] * b}
    for n, ts in trees.items():
        cases[f"{n}_each_own"] = [Boosting(t, 1.5) for t in ts]
    cases["100_shared"] = [Boosting(trees[100][0], 1.5)] * b
    cases["100_half"] = [Boosting(trees[100][0], 1.5) if k % 2 else None for k in range(b)]

    lens = [len(c) for c in clips]
    batch = torch.zeros(b, max(lens))
    for k, c in enumerate(clips):
        batch[k, : len(c)] = torch.from_numpy(c)
    length = torch.tensor(lens)
    from parakeet_worker.engine.decoding import decode as decode_batch

    with engine.exclusive() as m, torch.inference_mode():
        feats, feat_len = m.preprocessor(input_signal=batch.to(engine.device), length=length.to(engine.device))
        enc, enc_len = m.encoder(audio_signal=feats.to(engine.dtype), length=feat_len)
        decode = {name: (lambda bs=bs: decode_batch(m, enc, enc_len, bs)) for name, bs in cases.items()}
        decode_s = best_of(repeats, decode, clock(engine.device.type == "cuda"))
    whole = {
        name: (lambda bs=bs: engine.transcribe_batch(clips, boostings=bs))
        for name, bs in cases.items()
        if name in ("none", "10_each_own", "100_each_own", "1000_each_own")
    }
    whole_s = best_of(repeats, whole, clock(engine.device.type == "cuda"))
    return {
        "decoding_ms": {k: round(v * 1000, 1) for k, v in decode_s.items()},
        "decoding_vs_none": {k: round(v / decode_s["none"], 2) for k, v in decode_s.items()},
        "whole_pass_ms": {k: round(v * 1000, 1) for k, v in whole_s.items()},
        "whole_pass_vs_none": {k: round(v / whole_s["none"], 2) for k, v in whole_s.items()},
    }


def build_cost(engine) -> dict:
    """CPU time of building a list's tree (first request) and of finding it again (cached)."""
    out = {}
    for n in SIZES[1:]:
        phrases = phrase_lists(n, 1, 7 + n)[0]
        t0 = time.process_time()
        engine.hotword_trees.get(phrases)
        first = time.process_time() - t0
        t0 = time.process_time()
        engine.hotword_trees.get(phrases)
        out[str(n)] = {"first_ms": round(first * 1000, 1), "cached_ms": round((time.process_time() - t0) * 1000, 3)}
    return out


async def stream_all(engine, clips, boostings, decoder=None, now=time.process_time):
    """Every clip as one stream, all pushed at once (so each step batches all of them); returns
    the streams' texts, the time per decoding step and the decoder."""
    from parakeet_worker.engine.streaming import StreamDecoder

    dec = decoder or StreamDecoder(engine)
    dec.start()
    steps0, t0 = dec.steps, now()
    texts = [t or "" for t in await dec.transcribe_whole(clips, boostings)]
    await dec.stop()
    return texts, (now() - t0) / max(1, dec.steps - steps0), dec


def stream_cost(engine, clips, repeats: int) -> dict:
    from parakeet_worker.engine.hotwords import Boosting
    from parakeet_worker.engine.streaming import StreamDecoder

    n_streams = len(clips)
    cases = {"none": [None] * n_streams}
    for n in SIZES[1:]:
        cases[f"{n}_each_own"] = [Boosting(engine.hotword_trees.get(p), 1.5) for p in phrase_lists(n, n_streams, n)]

    async def measure():
        dec = StreamDecoder(engine)
        best = {name: float("inf") for name in cases}
        for _ in range(repeats):
            for name, bs in cases.items():
                _, per_step, _ = await stream_all(engine, clips, bs, dec, clock(engine.device.type == "cuda"))
                best[name] = min(best[name], per_step)
        return best

    best = asyncio.run(measure())
    return {
        "step_ms": {k: round(v * 1000, 1) for k, v in best.items()},
        "step_vs_none": {k: round(v / best["none"], 2) for k, v in best.items()},
    }


def accuracy(
    engine, n: int, seeds: tuple[int, int], unrelated: int = 10, modes: tuple[str, ...] = ("batch", "streaming")
) -> dict:
    """Fix rate and harm rate on ``n`` fresh sentences in held-out voices, batch and streaming."""
    from parakeet_worker.engine.hotwords import DEFAULT_BOOST, Boosting
    from tools.test_model import synth

    utts = accuracy_sentences(n, seeds[0])
    refs = [u.text.strip() for u in utts]
    clips = [u.audio for u in utts]
    vocab = synth.load_words("en")
    rng = random.Random(seeds[1])
    unrel = [tuple(rng.sample([w for w in vocab if w not in r.split()], unrelated)) for r in refs]

    def boost(words):
        return Boosting(engine.hotword_trees.get(tuple(words)), DEFAULT_BOOST)

    def batch(idx, bs):
        out = []
        for k in range(0, len(idx), 16):
            part = [clips[i] for i in idx[k : k + 16]]
            out += [t.text for t in engine.transcribe_batch(part, boostings=bs[k : k + 16])]
        return out

    def streamed(idx, bs):
        out = []
        for k in range(0, len(idx), 16):
            out += asyncio.run(stream_all(engine, [clips[i] for i in idx[k : k + 16]], bs[k : k + 16]))[0]
        return out

    result = {}
    for mode, run in (("batch", batch), ("streaming", streamed)):
        if mode not in modes:
            continue
        every = list(range(n))
        plain = run(every, [None] * n)
        missed = {i: sorted(set(refs[i].split()) - set(plain[i].split())) for i in every}
        wrong = [i for i in every if missed[i]]
        right = [i for i in every if plain[i] == refs[i]]
        fixed_out = run(wrong, [boost(missed[i]) for i in wrong])
        harm_out = run(right, [boost(unrel[i]) for i in right])
        fixed = sum(not set(missed[i]) - set(t.split()) for i, t in zip(wrong, fixed_out))
        exact = sum(t == refs[i] for i, t in zip(wrong, fixed_out))
        harmed = sum(t != refs[i] for i, t in zip(right, harm_out))
        words = sum(len(missed[i]) for i in wrong)
        words_back = sum(len(set(missed[i]) & set(t.split())) for i, t in zip(wrong, fixed_out))
        result[mode] = {
            "sentences": n,
            "wrong": len(wrong),
            "right": len(right),
            "fixed": fixed,
            "fix_rate": round(fixed / max(1, len(wrong)), 3),
            "exactly_right": exact,
            "missed_words": words,
            "missed_words_recovered": words_back,
            "harmed": harmed,
            "harm_rate": round(harmed / max(1, len(right)), 3),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))
    ap.add_argument("--batch", type=int, default=16, help="utterances in the batch-cost pass")
    ap.add_argument("--streams", type=int, default=8, help="streams in the streaming-cost steps")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sentences", type=int, default=120, help="fresh sentences for fix/harm rates")
    ap.add_argument("--seeds", type=int, nargs=2, default=(4242, 4243), help="sentences, unrelated lists")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads on CPU (1: CPU time is compute, not spin-waiting threads)"
    )
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--accuracy-modes", nargs="+", default=["batch", "streaming"], choices=["batch", "streaming"])
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, one repeat")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.streams, args.repeats, args.sentences = 2, 2, 1, 6

    import torch

    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine
    from parakeet_worker.engine.model_loader import load_model

    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)

    model = load_model(args.model, None)
    engine = Engine(Settings(model=args.model, max_batch_size=max(16, args.batch), warmup=True), model=model)
    clips = cost_clips(max(args.batch, args.streams))
    report = {
        "device": torch.cuda.get_device_name(0)
        if engine.device.type == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "model": shown(args.model),
    }
    if not args.skip_cost:
        report["tree_build"] = build_cost(engine)
        report["batch"] = batch_cost(engine, clips[: args.batch], args.repeats)
        report["streaming"] = stream_cost(engine, clips[: args.streams], args.repeats)
    if not args.skip_accuracy:
        report["accuracy"] = accuracy(engine, args.sentences, tuple(args.seeds), modes=tuple(args.accuracy_modes))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
