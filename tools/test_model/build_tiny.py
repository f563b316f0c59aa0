"""Build the tiny Parakeet-architecture test model: data -> tokenizer -> train -> .nemo -> evaluation.

    python tools/test_model/build_tiny.py            # everything, deterministic from --seed
    python tools/test_model/build_tiny.py --stage eval   # only re-measure the committed model

Synthetic English and Russian speech comes from espeak-ng (synth.py); the model is NeMo's own
EncDecRNNTBPEModel built from a parakeet-tdt-0.6b-v3-shaped config (config.py) and trained with a
plain PyTorch loop on the CPU TDT loss (tdt_loss.py), since NeMo's TDT loss is CUDA-only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.append(str(ROOT))  # run as a script from tools/test_model: the product modules too

from tools.test_model import synth  # noqa: E402
from tools.test_model.config import DURATIONS, TINY, parakeet_config  # noqa: E402
from tools.test_model.tdt_loss import tdt_loss  # noqa: E402

ASSETS = ROOT / "tests" / "assets"
MODEL_PATH = ASSETS / "tiny_parakeet.nemo"
METRICS_PATH = ASSETS / "tiny_parakeet_metrics.json"
WORK = Path(os.environ.get("TEST_MODEL_CACHE", Path.home() / ".cache" / "parakeet-test-models")) / "tiny"
VOCAB_SIZE = 512
log = logging.getLogger("build_tiny")


# ---------------------------------------------------------------- data
def _int16(audio: np.ndarray) -> np.ndarray:
    return (audio * 32767).clip(-32768, 32767).astype(np.int16)  # halves the 25 h of training audio


RECIPES = {"v1": synth.V1, "v2": synth.V2, "v3": synth.V3, "v4": synth.V4}


def _synth_chunk(args):
    lang, voices, n, seed, recipe = args
    return [
        (u.text, u.lang, u.voice, _int16(u.audio))
        for u in synth.make_utterances(lang, voices, n, seed, recipe=RECIPES[recipe])
    ]


def make_training_data(n_en: int, n_ru: int, seed: int, path: Path, recipe: str = "v1") -> None:
    chunk = 500
    jobs = []
    for lang, n, off in (("en", n_en, 0), ("ru", n_ru, 1_000_000)):
        for i in range(0, n, chunk):
            jobs.append((lang, synth.train_voices(lang), min(chunk, n - i), seed * 10_000_000 + off + i, recipe))
    t0 = time.time()
    with Pool(os.cpu_count() or 2) as pool:
        rows = [r for part in pool.map(_synth_chunk, jobs) for r in part]
    audio = np.concatenate([r[3] for r in rows])
    lens = np.array([len(r[3]) for r in rows], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, audio=audio, lens=lens, texts=np.array([r[0] for r in rows]), langs=np.array([r[1] for r in rows]))
    log.info("data: %d utterances, %.1f h, %.0f s", len(rows), lens.sum() / 16000 / 3600, time.time() - t0)


# ---------------------------------------------------------------- tokenizer
def make_tokenizer(texts: list[str], out_dir: Path) -> None:
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    create_spt_model(
        str(corpus), VOCAB_SIZE, sample_size=-1, do_lower_case=True, tokenizer_type="bpe", output_dir=str(out_dir)
    )
    corpus.unlink()


# ---------------------------------------------------------------- training
def build_model(tokenizer_dir: Path):
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    return EncDecRNNTBPEModel(cfg=parakeet_config(TINY, str(tokenizer_dir)))


def batches(lens: np.ndarray, max_seconds: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Length-bucketed batches of at most ``max_seconds`` of padded audio, in random order."""
    order = np.argsort(lens + rng.integers(0, 8000, lens.size))  # jitter so buckets differ per epoch
    out, cur, longest = [], [], 0
    for i in order:
        longest_new = max(longest, lens[i])
        if cur and longest_new * (len(cur) + 1) > max_seconds * 16000:
            out.append(np.array(cur))
            cur, longest_new = [], lens[i]
        cur.append(i)
        longest = longest_new
    if cur:
        out.append(np.array(cur))
    rng.shuffle(out)
    return out


def as_dataset(utts: list) -> dict:
    """Utterances in the same packed layout as the training .npz (int16 audio, lengths, texts)."""
    pcm = [_int16(u.audio) for u in utts]
    return {
        "audio": np.concatenate(pcm),
        "lens": np.array([len(a) for a in pcm], dtype=np.int64),
        "texts": np.array([u.text for u in utts]),
    }


def endless_batches(data: dict, max_seconds: float, rng: np.random.Generator, targets: list, pad_id: int):
    """(signal, lengths, targets, target lengths) batches over ``data``, epoch after epoch."""
    offsets = np.concatenate([[0], np.cumsum(data["lens"])])
    while True:
        for idx in batches(data["lens"], max_seconds, rng):
            lens = data["lens"][idx]
            sig = torch.zeros(len(idx), int(lens.max()))
            for j, i in enumerate(idx):
                pcm = data["audio"][offsets[i] : offsets[i + 1]]
                sig[j, : lens[j]] = torch.from_numpy(pcm.astype(np.float32) / 32768)
            tl = torch.tensor([len(targets[i]) for i in idx])
            tg = torch.full((len(idx), int(tl.max())), pad_id, dtype=torch.long)
            for j, i in enumerate(idx):
                tg[j, : tl[j]] = torch.tensor(targets[i])
            yield sig, torch.from_numpy(lens), tg, tl


@dataclass(frozen=True)
class Phase:
    """One stage of the curriculum: which data, which loss, how many optimizer steps."""

    name: str
    steps: int
    data: str  # "bootstrap" (clean, one voice) or "full"
    loss: str  # "ctc" (encoder + auxiliary CTC head only) or "tdt" (TDT + weighted auxiliary CTC)


def curriculum(boot_steps: int, ctc_steps: int, tdt_steps: int) -> list[Phase]:
    """Why three phases (docs/TEST_MODEL_STATUS.md has the runs behind this):

    A FastConformer trained from scratch on the full, diverse data sits on the CTC blank plateau
    for longer than 2 CPU cores allow, and a transducer trained from scratch learns only its
    prediction network (word completion) while the encoder learns nothing. The encoder leaves the
    plateau within a few hundred steps on clean speech of one voice; from there it adapts to every
    voice, speed, noise and both languages with CTC, and only then is the TDT decoder trained on top.
    """
    return [
        Phase("bootstrap", boot_steps, "bootstrap", "ctc"),
        Phase("ctc", ctc_steps, "full", "ctc"),
        Phase("tdt", tdt_steps, "full", "tdt"),
    ]


class _Im2colConv(torch.autograd.Function):
    """conv2d forward and backward on ATen's im2col + GEMM path instead of oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding)
        with _without_onednn():
            return torch.nn.functional.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding = ctx.geometry
        with _without_onednn():
            gx, gw, gb = torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                [weight.shape[0]],
                stride,
                padding,
                [1, 1],
                False,
                [0, 0],
                1,
                [ctx.needs_input_grad[0], True, True],
            )
        return gx, gw, gb, None, None


class _Im2colConv2d(torch.nn.Conv2d):
    def forward(self, x):
        return _Im2colConv.apply(x, self.weight, self.bias, list(self.stride), list(self.padding))


class _without_onednn:
    """torch.backends.mkldnn.flags(enabled=False) without the TF32 warning that flags() gives."""

    def __enter__(self):
        self.was = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False

    def __exit__(self, *exc):
        torch.backends.mkldnn.enabled = self.was


def _fast_first_conv(model, on: bool) -> None:
    """The subsampling's first convolution (1 input channel, full 100 fps x 128 mel resolution)
    is, with the depthwise one after it, the costliest layer of a training step under oneDNN on
    this CPU (no AVX2): forward + backward ~4x slower than ATen's im2col path, ~11% of a TDT step
    (measured in session 5). Swapping the module's class changes no weight and no saved file; it
    is swapped back before saving."""
    first = model.encoder.pre_encode.conv[0]
    if isinstance(first, torch.nn.Conv2d) and first.in_channels == 1 and first.groups == 1:
        first.__class__ = _Im2colConv2d if on else torch.nn.Conv2d


def train(
    model,
    data: dict,
    boot: dict | None,
    phases: list[Phase],
    seed: int,
    max_seconds: float,
    peak_lr: float,
    ctc_weight: float,
    warmup: int = 100,
    probe_every: int = 200,
) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = model.tokenizer
    blank = tok.vocab_size
    # Auxiliary CTC head on the encoder, used only during training (not saved).
    ctc_head = torch.nn.Linear(TINY.d_model, blank + 1)
    params = list(model.parameters()) + list(ctc_head.parameters())
    opt = torch.optim.AdamW(params, lr=peak_lr, betas=(0.9, 0.98), weight_decay=1e-3)
    total = sum(p.steps for p in phases)
    decay_from = total - phases[-1].steps

    def lr_at(step):  # linear warmup, flat through the CTC phases, cosine over the TDT phase
        if step < warmup:
            return peak_lr * (step + 1) / warmup
        if step < decay_from:
            return peak_lr
        progress = (step - decay_from) / max(1, total - decay_from)
        return 1e-5 + 0.5 * (peak_lr - 1e-5) * (1 + math.cos(math.pi * progress))

    streams = {
        name: endless_batches(d, max_seconds, rng, [tok.text_to_ids(t) for t in d["texts"]], blank)
        for name, d in (("bootstrap", boot), ("full", data))
        if d is not None
    }
    probe = _probe_set()
    spec_aug = model.spec_augmentation
    _fast_first_conv(model, True)
    model.train()
    step, t0, hist, timing = 0, time.time(), [], {}
    log.info("step 0 probe WER %s", _probe_wer(model, probe))  # the starting point (an --init model's)
    for phase in phases:
        t_phase = time.time()
        # SpecAugment only once the encoder reads: masking makes the plateau longer.
        model.spec_augmentation = spec_aug if phase.loss == "tdt" else None
        for _ in range(phase.steps):
            sig, lens, tg, tl = next(streams[phase.data])
            enc, enc_len = model.forward(input_signal=sig, input_signal_length=lens)
            ctc_lp = torch.log_softmax(ctc_head(enc.transpose(1, 2)), -1).transpose(0, 1)
            ctc = (
                torch.nn.functional.ctc_loss(ctc_lp, tg, enc_len, tl, blank=blank, reduction="sum", zero_infinity=True)
                / tl.sum()
            )
            if phase.loss == "ctc":
                loss = loss_total = ctc
            else:
                dec, _, _ = model.decoder(targets=tg, target_length=tl)
                joint = model.joint(encoder_outputs=enc, decoder_outputs=dec)
                loss = tdt_loss(joint, tg, enc_len, tl, DURATIONS, blank=blank, sigma=0.02).float()
                loss_total = loss + ctc_weight * ctc
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss_total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            hist.append(loss.item())
            step += 1
            if step % probe_every == 0:
                log.info("step %d probe WER %s", step, _probe_wer(model, probe, ctc_head))
            if step % 50 == 0 or step == 1:
                el = time.time() - t0
                log.info(
                    "[%s] step %d/%d ctc %.3f loss %.3f (avg50 %.3f) lr %.2e  %.0f s elapsed, eta %.0f s",
                    phase.name,
                    step,
                    total,
                    ctc.item(),
                    loss.item(),
                    float(np.mean(hist[-50:])),
                    lr_at(step),
                    el,
                    el / step * (total - step),
                )
        timing[phase.name] = {"steps": phase.steps, "seconds": round(time.time() - t_phase, 1)}
    model.spec_augmentation = spec_aug
    _fast_first_conv(model, False)
    model.eval()
    return {
        "steps": total,
        "phases": timing,
        "train_seconds": round(time.time() - t0, 1),
        "final_tdt_loss": float(np.mean(hist[-100:])),
    }


def _probe_set() -> list:
    """A few fresh sentences per language, to log real WER while training (cheap: ~1 s), then
    unpadded 1-2-word utterances (issue 15's hardest case) for the exact-match rate."""
    return [
        synth.make_utterances(lang, synth.train_voices(lang), 16, seed) for lang, seed in (("en", 77), ("ru", 78))
    ] + [
        [u for u, _ in synth.edge_pairs(lang, synth.train_voices(lang), 32, seed, (1, 2))]
        for lang, seed in (("en", 79), ("ru", 80))
    ]


def _greedy(model, utts: list):
    """(TDT hypotheses, encoder output, its lengths) for one padded batch of ``utts``."""
    sig, lens = synth.pad_batch([u.audio for u in utts])
    enc, enc_len = model.forward(input_signal=sig, input_signal_length=lens)
    return model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len), enc, enc_len


def _probe_wer(model, probe, ctc_head=None) -> str:
    import jiwer

    model.eval()
    out, ctc_out, short = [], [], []
    with torch.inference_mode():
        for utts in probe[2:]:
            hyps, _, _ = _greedy(model, utts)
            short.append(f"{np.mean([u.text == h.text.strip() for u, h in zip(utts, hyps)]):.2f}")
        for utts in probe[:2]:
            hyps, enc, enc_len = _greedy(model, utts)
            out.append(f"{jiwer.wer([u.text for u in utts], [h.text for h in hyps]):.3f}")
            if ctc_head is not None:
                best = ctc_head(enc.transpose(1, 2)).argmax(-1)
                blank = model.tokenizer.vocab_size
                texts = []
                for row, n in zip(best.tolist(), enc_len.tolist()):
                    ids = [p for k, p in enumerate(row[:n]) if p != blank and (k == 0 or p != row[k - 1])]
                    texts.append(model.tokenizer.ids_to_text(ids))
                ctc_out.append(f"{jiwer.wer([u.text for u in utts], texts):.3f}")
    model.train()
    return (
        f"tdt en {out[0]} ru {out[1]}"
        + (f" | ctc en {ctc_out[0]} ru {ctc_out[1]}" if ctc_out else "")
        + f" | 1-2 words unpadded exact en {short[0]} ru {short[1]}"
    )


# ---------------------------------------------------------------- evaluation
EVAL_SETS = {
    # name: (language, voices, seeds); every clip is a fresh draw, never a training one. Seeds:
    # V1-style sentences (the figures measured since the first model), sentences with and without
    # silence around the speech, 1-2-word utterances with and without it.
    "en_train_voices": ("en", None, (901, 931, 941)),
    "en_held_out_voices": ("en", synth.HELD_OUT["en"], (902, 932, 942)),
    "ru_train_voices": ("ru", None, (903, 933, 943)),
    "ru_held_out_voices": ("ru", synth.HELD_OUT["ru"], (904, 934, 944)),
}
EDGE_PAD = 0.3  # seconds of silence the "padded" clips get at both ends


def _engine(model_path: Path):
    """The product's batch engine on the model: what a batch job's audio goes through."""
    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine
    from parakeet_worker.engine.model_loader import load_model

    return Engine(Settings(model=str(model_path), warmup=False), model=load_model(str(model_path), device="cpu"))


def _transcribe(engine, audios: list) -> list:
    """Transcripts through the product's engine (preprocessor, encoder, TDT decoding, 16 clips a
    pass). Not NeMo's transcribe(): that pads every clip under 1 s to 1 s with zeros first."""
    return [t for i in range(0, len(audios), 16) for t in engine.transcribe_batch(audios[i : i + 16])]


def _nemo_transcribe(model, audios: list) -> list:
    hyps = model.transcribe(audios, batch_size=16, timestamps=False, verbose=False)
    model.eval()  # NEMO_NOTES.md: transcribe() leaves the model in training mode
    return [h.text.strip() for h in hyps]


def _first_word_ok(ref: str, hyp: str) -> bool:
    return bool(hyp.split()) and hyp.split()[0] == ref.split()[0]


def evaluate(model_path: Path, n: int) -> dict:
    """Per language and voice group: WER on V1-style clips (as measured since the first model);
    WER and first-word accuracy on the same sentences unpadded (speech from the first to the
    last sample) and padded (0.3 s of silence at both ends); exact match on 1-2-word utterances."""
    import jiwer

    engine = _engine(model_path)
    results = {}
    for name, (lang, voices, (seed, seed_edges, seed_short)) in EVAL_SETS.items():
        voices = voices or synth.train_voices(lang)
        utts = synth.make_utterances(lang, voices, n, seed)
        hyps = _transcribe(engine, [u.audio for u in utts])
        refs = [u.text for u in utts]
        ts_ok = all(_timestamps_ok(h, len(u.audio) / 16000) for h, u in zip(hyps, utts))
        res = {"n": n, "wer": round(jiwer.wer(refs, [h.text for h in hyps]), 4), "timestamps_ok": ts_ok}
        for kind, seed_k, words_range in (("sentences", seed_edges, (3, 12)), ("short", seed_short, (1, 2))):
            pairs = synth.edge_pairs(lang, voices, n, seed_k, words_range, pad=EDGE_PAD)
            refs = [u.text for u, _ in pairs]
            for i, variant in enumerate(("unpadded", "padded")):
                texts = [h.text.strip() for h in _transcribe(engine, [p[i].audio for p in pairs])]
                if kind == "sentences":
                    res[f"wer_{variant}"] = round(jiwer.wer(refs, texts), 4)
                    first = [_first_word_ok(r, t) for r, t in zip(refs, texts)]
                    res[f"first_word_{variant}"] = round(float(np.mean(first)), 4)
                else:
                    res[f"short_exact_{variant}"] = round(float(np.mean([r == t for r, t in zip(refs, texts)])), 4)
                    res[f"short_wer_{variant}"] = round(jiwer.wer(refs, texts), 4)
        # the same unpadded 1-2-word clips through NeMo's transcribe(), which zero-pads them to 1 s
        texts = _nemo_transcribe(engine.model, [u.audio for u, _ in pairs])
        res["short_exact_unpadded_nemo_transcribe"] = round(float(np.mean([r == t for r, t in zip(refs, texts)])), 4)
        results[name] = res
        log.info(
            "eval %-20s WER %.2f%% | sentences WER unpadded %.2f%% padded %.2f%%, first word %.1f%% / %.1f%%"
            " | 1-2 words exact %.1f%% / %.1f%% (NeMo transcribe() %.1f%%) | timestamps ok: %s",
            name,
            100 * res["wer"],
            100 * res["wer_unpadded"],
            100 * res["wer_padded"],
            100 * res["first_word_unpadded"],
            100 * res["first_word_padded"],
            100 * res["short_exact_unpadded"],
            100 * res["short_exact_padded"],
            100 * res["short_exact_unpadded_nemo_transcribe"],
            ts_ok,
        )
    return results


def _timestamps_ok(transcript, duration: float) -> bool:
    last = 0.0
    for w in transcript.words:
        if not (last - 1e-6 <= w.start <= w.end <= duration + 1e-6):
            return False
        last = w.start
    return True


# ---------------------------------------------------------------- main
def _rel(value) -> str:
    """Paths inside the repository recorded relative to it (the metrics file is committed)."""
    if isinstance(value, Path) and value.resolve().is_relative_to(ROOT):
        return str(value.resolve().relative_to(ROOT))
    return str(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--stage",
        choices=["all", "data", "train", "eval"],
        default="all",
        help="all: data, training, evaluation; train: data (unless cached) and training only",
    )
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--data-seed",
        type=int,
        help="seed of the training data (default: --seed); a second fine-tune"
        " on the same data takes it with a new --seed, which reshuffles the batches",
    )
    ap.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="v1",
        help="training data: v1 (the first model's), v2 to v4 (issue 15: speech from the first sample,"
        " 1-2-word utterances; used for fine-tunes of v1, see MODEL_CARD.md)",
    )
    ap.add_argument("--n-en", type=int, default=16000)
    ap.add_argument("--n-ru", type=int, default=10000)
    ap.add_argument("--boot-steps", type=int, default=400, help="phase 1: CTC on clean speech of one voice")
    ap.add_argument("--ctc-steps", type=int, default=1000, help="phase 2: CTC on the full data")
    ap.add_argument("--steps", type=int, default=2000, help="phase 3: TDT + auxiliary CTC on the full data")
    ap.add_argument("--batch-seconds", type=float, default=60.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100, help="linear LR warmup steps")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores; 1 is faster on a crowded CPU)")
    ap.add_argument("--ctc-weight", type=float, default=0.3)
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--probe-every", type=int, default=200, help="log the probe WERs every N steps (~20 s each)")
    ap.add_argument("--out", type=Path, default=MODEL_PATH)
    ap.add_argument(
        "--metrics",
        type=Path,
        help="where the metrics go (default: next to --out; the committed"
        " model's are tests/assets/tiny_parakeet_metrics.json)",
    )
    ap.add_argument("--init", type=Path, help="start from this .nemo instead of random weights")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads or os.cpu_count() or 2)
    random.seed(args.seed)
    torch.manual_seed(args.seed)  # the random initial weights too: train() seeds only after the model exists
    tag = "" if args.recipe == "v1" else f"{args.recipe}_"  # v1 keeps the first model's cache name
    data_seed = args.seed if args.data_seed is None else args.data_seed
    data_path = WORK / f"train_{tag}{data_seed}_{args.n_en}_{args.n_ru}.npz"
    if args.metrics is None:
        args.metrics = METRICS_PATH if args.out.resolve() == MODEL_PATH else args.out.with_suffix(".metrics.json")
    t_build = time.time()

    if args.stage in ("all", "data", "train") and not data_path.exists():  # training needs its data
        make_training_data(args.n_en, args.n_ru, data_seed, data_path, args.recipe)
    info = {}
    if args.stage in ("all", "train"):
        data = dict(np.load(data_path))
        if args.init:  # continue training an earlier build (its tokenizer comes with it)
            from nemo.collections.asr.models import EncDecRNNTBPEModel

            model = EncDecRNNTBPEModel.restore_from(str(args.init), map_location="cpu")
        else:
            tok_dir = WORK / "tokenizer"
            make_tokenizer(list(data["texts"]), tok_dir)
            model = build_model(tok_dir)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("model: %.2f M parameters", n_params / 1e6)
        boot = None
        if not args.init:  # phase 1's clean single-voice set (V1, no augmentation: unchanged since the first model)
            boot = as_dataset(synth.make_utterances("en", ["en-us"], 600, args.seed + 1, augment=False))
        phases = curriculum(0 if args.init else args.boot_steps, 0 if args.init else args.ctc_steps, args.steps)
        info = train(
            model,
            data,
            boot,
            phases,
            args.seed,
            args.batch_seconds,
            args.lr,
            args.ctc_weight,
            args.warmup,
            args.probe_every,
        )
        info.update(
            {
                "data_recipe": dataclasses.asdict(RECIPES[args.recipe]),
                "parameters": n_params,
                "train_utterances": int(len(data["lens"])),
                "train_hours": round(float(data["lens"].sum()) / 16000 / 3600, 2),
                "seed": args.seed,
                "threads": torch.get_num_threads(),
                "args": {k: _rel(v) for k, v in vars(args).items()},
            }
        )
        model.save_to(str(args.out))
        log.info("saved %s (%.1f MB)", args.out, args.out.stat().st_size / 1e6)
    if args.stage in ("all", "eval"):
        results = evaluate(args.out, args.eval_n)
        old = json.loads(args.metrics.read_text()) if args.metrics.exists() and not info else {}
        metrics = {
            **old,
            **({"training": info} if info else {}),
            "eval": results,
            "model_size_mb": round(args.out.stat().st_size / 1e6, 2),
        }
        if args.stage == "all":
            metrics["build_seconds"] = round(time.time() - t_build, 1)
        args.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    try:
        main()
    except SystemExit:  # --help, argument errors: not a failed build
        raise
    except BaseException:  # a long build runs unattended: say so in its log, then fail as usual
        log.exception("BUILD FAILED")
        raise
    log.info("BUILD DONE")
