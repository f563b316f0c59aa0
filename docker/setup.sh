#!/usr/bin/env bash
# The Docker image's build steps as one script, so the tests run them too and they cannot rot.
#   system : OS packages (ffmpeg for decoding, libsndfile for the WAV/FLAC fast path)
#   python : torch (CUDA build in the image; TORCH_SPEC to override) and requirements.txt
#   bake   : download $PARAKEET_MODEL, unpack it into $PARAKEET_MODEL_CACHE, load it once
#   check  : the runtime has what the worker needs (ffmpeg, imports, model loads)
set -euo pipefail
cd "$(dirname "$0")/.."
step="${1:?usage: docker/setup.sh system|python|bake|check}"
PY="${PYTHON:-python3}"
# Load the configured model as the worker does: PARAKEET_MODEL from PARAKEET_MODEL_CACHE when unpacked there.
LOAD="import asr_engine, settings; s = settings.Settings.from_env(); m = asr_engine.load_model(s.model, 'cpu', s.model_cache_dir)"

case "$step" in
  system)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip ffmpeg libsndfile1 ca-certificates
    rm -rf /var/lib/apt/lists/*
    ;;
  python)
    "$PY" -m pip install --no-cache-dir "${TORCH_SPEC:-torch==2.13.0}"
    "$PY" -m pip install --no-cache-dir -r requirements.txt
    ;;
  bake)
    if [ -n "${PARAKEET_MODEL_CACHE:-}" ]; then
      # Unpack the model once into the image (model_loader.py): a cold start neither downloads nor
      # unpacks it. The downloaded archive goes with this step, so the image holds one copy.
      download="$(mktemp -d)"
      HF_HOME="$download" "$PY" model_loader.py
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
