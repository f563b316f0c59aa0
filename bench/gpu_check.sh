#!/usr/bin/env bash
# The first GPU run, one command, under 7 minutes on one H100/H200 (install from carried wheels
# included): is the GPU/BF16 path correct, and the figures the engine's defaults rest on.
#
#   bash bench/gpu_check.sh [OUT_DIR] [PART ...]
#
# OUT_DIR: where gpu_check.json goes (default $OUT when set, else bench/results/gpu); nothing else
# is written there (logs go to stderr). PARTS: correctness (tiny model, ~1 min) and full
# (full-size random model, ~3-4 min); default both. GPU_CHECK_BUDGET_S (default 330) stops
# starting sections after that many seconds of checking; the whole command is also cut at 400 s.
# GPU_CHECK_CPU=1 runs the same sections on CPU with bf16 forced and tiny sizes (the tests do).
# What to carry to a machine without network: docs/PERFORMANCE.md, "GPU check".
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT_DIR="${1:-${OUT:-$ROOT/bench/results/gpu}}"
shift || true
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(correctness full)
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
. "$ROOT/bench/gpu_env.sh"

SMOKE=(); BUDGET="${GPU_CHECK_BUDGET_S:-330}"; LIMIT=400
# on CPU (tests) the GPU machine's time limits do not apply: the caller's timeout does
[ "${GPU_CHECK_CPU:-0}" = 1 ] && { SMOKE=(--cpu-smoke); BUDGET="${GPU_CHECK_BUDGET_S:-100000}"; LIMIT=100000; }
log "parts: ${PARTS[*]} -> $OUT_DIR/gpu_check.json"
timeout -k 10 "$LIMIT" "$PY" bench/gpu_check.py --out "$OUT_DIR/gpu_check.json" --parts "${PARTS[@]}" \
    --budget-s "$BUDGET" "${SMOKE[@]}"
rc=$?
rm -f "$OUT_DIR/gpu_check.tmp"
[ -f "$OUT_DIR/gpu_check.json" ] || { log "no result written"; exit 1; }
log "done (rc $rc): $OUT_DIR/gpu_check.json"
exit $rc
