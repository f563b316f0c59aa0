"""Build the full parakeet-tdt-0.6b-v3 architecture with random weights, for speed and memory work.

    python tools/test_model/build_full.py [--tokens-per-second 5] [--out PATH]

The result (about 2.5 GB) is cached outside git, by default in
~/.cache/parakeet-test-models/full/parakeet_tdt_v3_random.nemo.

Random weights make the joint emit a token on most frames (125 tokens/s measured), so decoding
cost would swamp every benchmark. ``--tokens-per-second`` biases the joint's duration head so
greedy TDT decoding emits about that many tokens per second of audio, as real speech does (3-8).
The measured rate is printed and stored beside the model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.append(str(HERE.parents[1]))  # run as a script from tools/test_model: the product modules too

from tools.test_model import synth  # noqa: E402
from tools.test_model.config import DURATIONS, FULL, parakeet_config  # noqa: E402

CACHE = Path(os.environ.get("TEST_MODEL_CACHE", Path.home() / ".cache" / "parakeet-test-models")) / "full"
DEFAULT_OUT = CACHE / "parakeet_tdt_v3_random.nemo"
VOCAB_SIZE = 8192
log = logging.getLogger("build_full")


def local_corpus(path: Path, max_lines: int = 400_000) -> None:
    """Text for the 8192-token tokenizer: the Python standard library's sources and our word lists."""
    lines: list[str] = []
    for w in ("en", "ru"):
        lines += synth.load_words(w) * 20
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(stdlib.rglob("*.py")):
        try:
            lines += [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if len(ln.strip()) > 3]
        except (UnicodeDecodeError, OSError):
            continue
        if len(lines) >= max_lines:
            break
    path.write_text("\n".join(lines[:max_lines]) + "\n", encoding="utf-8")


def emission_rate(model, enc, enc_len, seconds: float) -> float:
    with torch.inference_mode():
        hyps = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len)
    return sum(len(h.y_sequence) for h in hyps) / seconds


def calibration_clips(n_clips: int = 4) -> list:
    rng = random.Random(0)
    return [
        synth.synthesize(synth.random_sentence(rng, synth.load_words("en"), 20, 30), "en", "en-us", rng).audio
        for _ in range(n_clips)
    ]


def calibrate_emission(model, target: float, n_clips: int = 4) -> tuple[int, float]:
    """Make greedy TDT decoding emit about ``target`` tokens/s on real (synthetic) speech.

    With random weights the encoder output hardly depends on the input, so the joint gives nearly
    the same logits on every frame and a bias on the blank logit is a cliff: every frame emits
    (~125 tokens/s) or none does (measured). Instead the duration head is biased to one duration
    d, so each decoding step emits one token and jumps d frames: 12.5 / d tokens per second, the
    same number of decoder steps that real speech costs. d is the one closest to ``target``."""
    clips = calibration_clips(n_clips)
    seconds = sum(len(c) for c in clips) / 16000
    sig, lens = synth.pad_batch(clips)
    with torch.inference_mode():
        enc, enc_len = model.forward(input_signal=sig, input_signal_length=lens)
    log.info("emission rate without bias: %.1f tokens/s", emission_rate(model, enc, enc_len, seconds))
    frames_per_s = 1.0 / (model.cfg.preprocessor.window_stride * model.encoder.subsampling_factor)
    d = min((x for x in DURATIONS if x > 0), key=lambda x: abs(frames_per_s / x - target))
    out_layer = model.joint.joint_net[-1]
    first_duration = model.tokenizer.vocab_size + 1  # logits: tokens, blank, then durations
    out_layer.bias.data[first_duration + DURATIONS.index(d)] += 50.0
    return d, emission_rate(model, enc, enc_len, seconds)


def tokenizer_dir() -> Path:
    """The 8192-token tokenizer, trained once into the cache (TEST_MODEL_CACHE; a GPU machine
    without time to train it gets the folder carried)."""
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    tok_dir = CACHE / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    if not (tok_dir / "tokenizer.model").exists():
        corpus = tok_dir / "corpus.txt"
        local_corpus(corpus)
        create_spt_model(
            str(corpus), VOCAB_SIZE, sample_size=-1, do_lower_case=False, tokenizer_type="bpe", output_dir=str(tok_dir)
        )
        corpus.unlink()
    return tok_dir


def build(tokens_per_second: float = 5.0, seed: int = 0):
    """The full-size model in memory (eval mode, CPU) and a description of it."""
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    torch.manual_seed(seed)
    model = EncDecRNNTBPEModel(cfg=parakeet_config(FULL, str(tokenizer_dir()))).eval()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("full-size model: %d parameters (%.1f M)", n_params, n_params / 1e6)
    info = {"parameters": n_params, "vocab_size": model.tokenizer.vocab_size, "seed": seed}
    if tokens_per_second > 0:
        d, rate = calibrate_emission(model, tokens_per_second)
        info.update({"forced_duration": d, "tokens_per_second": round(rate, 2)})
        log.info(
            "duration head biased to %d frames -> measured emission rate %.2f tokens/s (target %.1f)",
            d,
            rate,
            tokens_per_second,
        )
    return model, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tokens-per-second", type=float, default=5.0, help="target emission rate; 0 keeps the raw random joint"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    t0 = time.time()
    model, info = build(args.tokens_per_second, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(args.out))
    info["build_seconds"] = round(time.time() - t0, 1)
    info["size_gb"] = round(args.out.stat().st_size / 1e9, 2)
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
