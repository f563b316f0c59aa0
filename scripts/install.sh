#!/usr/bin/env bash
# Install everything the worker and its tests need on a fresh Debian/Ubuntu machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

# ffmpeg decodes audio; espeak-ng and sox make the tests' speech; chromium (driven by Playwright,
# whose own browser download is not used) and firefox-esr (over WebDriver BiDi; it plays audio to a
# private pulseaudio null sink) run the microphone page in the browser tests.
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq espeak-ng sox ffmpeg libsndfile1 chromium firefox-esr pulseaudio >/dev/null

# torch first, pinned, so that NeMo's requirements do not pick another version. Which build comes
# is the package index's: PyPI's Linux wheel is the CUDA build (GBs); for the CPU build on a
# machine without a GPU, set TORCH_INDEX=https://download.pytorch.org/whl/cpu.
python3 -m pip install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "${TORCH_SPEC:-torch==2.13.0}"
python3 -m pip install -q -r requirements-dev.txt
# the worker's package, importable from anywhere (its dependencies are the lines above)
python3 -m pip install -q --no-deps -e .
