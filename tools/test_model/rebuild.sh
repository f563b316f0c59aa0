#!/usr/bin/env bash
# Rebuild the committed test model (v4, MODEL_CARD.md "Rebuild") in one command:
#   bash tools/test_model/rebuild.sh [WORK_DIR]
# v1 from scratch, then six fine-tunes, each stage's .nemo and metrics kept in WORK_DIR; only the
# last stage is evaluated (the others would add ~4 min each). The result replaces
# tests/assets/tiny_parakeet.nemo; its metrics stay in WORK_DIR/v4.metrics.json, so the committed
# metrics file keeps its history until you merge them. ~4 h on 2 idle cores (MODEL_CARD.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-$(mktemp -d -t tiny-rebuild.XXXXXX)}"
mkdir -p "$work"
build() { python3 tools/test_model/build_tiny.py "$@"; }
stage() { build --stage train "$@"; }  # data (unless cached) and training, no evaluation
ft=(--threads 2 --batch-seconds 30 --warmup 50)

stage --out "$work/v1.nemo"
stage --recipe v2 "${ft[@]}" --threads 1 --init "$work/v1.nemo" --steps 600 --lr 3e-4 --out "$work/ft1.nemo"
stage --recipe v2 "${ft[@]}" --threads 1 --init "$work/ft1.nemo" --steps 1000 --lr 3e-4 --out "$work/v2.nemo"
stage --recipe v3 "${ft[@]}" --seed 1235 --init "$work/v2.nemo" --steps 1500 --lr 3e-4 --out "$work/ft3.nemo"
stage --recipe v4 "${ft[@]}" --seed 1237 --init "$work/ft3.nemo" --steps 1500 --lr 3e-4 --out "$work/ft4.nemo"
stage --recipe v4 "${ft[@]}" --seed 1238 --data-seed 1237 --init "$work/ft4.nemo" --steps 1000 --lr 2e-4 \
    --out "$work/v3.nemo"
build --recipe v4 "${ft[@]}" --seed 1239 --init "$work/v3.nemo" --steps 1000 --lr 1.5e-4 --out "$work/v4.nemo"
cp "$work/v4.nemo" tests/assets/tiny_parakeet.nemo
echo "installed $work/v4.nemo as tests/assets/tiny_parakeet.nemo; metrics: $work/v4.metrics.json"
