#!/usr/bin/env bash
# The Docker image's build steps as one script, so the tests run them too and they cannot rot.
#   system : OS packages (ffmpeg for decoding, libsndfile for the WAV/FLAC fast path)
#   user   : the unprivileged user the worker runs as (no fixed UID: Ubuntu 24.04 images already
#            have `ubuntu` as UID 1000)
#   python : torch (TORCH_SPEC, from TORCH_INDEX if set, else PyPI) and requirements.txt; in a CUDA
#            image (CUDA_VERSION set by the base) torch's CUDA major must match it
#   bake   : download $PARAKEET_MODEL, unpack it into $PARAKEET_MODEL_CACHE, load it once
#   check  : the runtime has what the worker needs (ffmpeg, imports, model loads)
set -euo pipefail
cd "$(dirname "$0")/.."
step="${1:?usage: docker/setup.sh system|user|python|cuda-match|bake|check}"
PY="${PYTHON:-python3}"
# Load the configured model as the worker does: PARAKEET_MODEL from PARAKEET_MODEL_CACHE when unpacked there.
LOAD="from parakeet_worker.config.settings import Settings; from parakeet_worker.engine.model_loader import load_model; s = Settings.from_env_or_exit(); m = load_model(s.model, 'cpu', s.model_cache_dir)"

case "$step" in
  system)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip ffmpeg libsndfile1 ca-certificates
    rm -rf /var/lib/apt/lists/*
    ;;
  user)
    id -u worker >/dev/null 2>&1 || useradd --create-home --shell /usr/sbin/nologin worker
    ;;
  python)
    if [ -n "${TORCH_INDEX:-}" ]; then
      "$PY" -m pip install --no-cache-dir --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple \
        "${TORCH_SPEC:-torch==2.13.0}"
    else
      "$PY" -m pip install --no-cache-dir "${TORCH_SPEC:-torch==2.13.0}"
    fi
    "$PY" -m pip install --no-cache-dir -r requirements.txt
    [ -z "${CUDA_VERSION:-}" ] || bash "$0" cuda-match
    ;;
  cuda-match)
    # torch's CUDA build and the image's CUDA must agree, or on a host that satisfies the image
    # torch finds no usable GPU and the worker would (without the start-up check) run on CPU.
    "$PY" - <<'PYEOF'
import os, sys
import torch
want = os.environ.get("CUDA_VERSION", "")
have = torch.version.cuda
if not have:
    sys.exit(f"torch {torch.__version__} is a CPU-only build; the image is CUDA {want}")
if have.split(".")[0] != want.split(".")[0]:
    sys.exit(f"torch {torch.__version__} is built for CUDA {have}, the image for CUDA {want}")
print(f"torch {torch.__version__}: CUDA {have}, image CUDA {want}")
PYEOF
    ;;
  bake)
    if [ -n "${PARAKEET_MODEL_CACHE:-}" ]; then
      # Unpack the model once into the image (parakeet_worker/engine/model_loader.py): a cold start neither downloads nor
      # unpacks it. The downloaded archive goes with this step, so the image holds one copy.
      download="$(mktemp -d)"
      HF_HOME="$download" "$PY" -m parakeet_worker.engine.model_loader
      rm -rf "$download"
    fi
    "$PY" -c "$LOAD; print('baked', type(m).__name__)"
    ;;
  check)
    command -v ffmpeg >/dev/null || { echo "ffmpeg missing" >&2; exit 1; }
    "$PY" -c "import runpod, nemo.collections.asr, soundfile, soxr, aiohttp, websockets; print('imports ok')"
    "$PY" -c "$LOAD; print('model ok')"
    ;;
  *)
    echo "unknown step: $step" >&2; exit 2 ;;
esac
