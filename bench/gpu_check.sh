#!/usr/bin/env bash
# The first GPU run, one command, within 10 minutes on one H100/H200 (install from carried wheels
# included): is the GPU/BF16 path correct, the figures the engine's defaults rest on, and does the
# real worker serve when started as a user starts it.
#
#   bash bench/gpu_check.sh [OUT_DIR] [PART ...]
#
# OUT_DIR: where gpu_check.json goes (default $OUT when set, else bench/results/gpu); nothing else
# is written there (logs go to stderr; the workers' logs to GPU_CHECK_LOGS, default a temporary
# folder, and their tails and errors into the JSON). PARTS, default all three in this order:
#   correctness  tiny model in the engine, in this process (~1 min; OOM injection in its own)
#   full         full-size random model in the engine (~3.5 min; the real OOM in its own process);
#                saves the model to FULL_MODEL, which `worker` then loads
#   worker       bench/gpu_worker_check.py: rp_handler.py started as a user would (load-balancer and
#                queue mode), driven from another process: OpenAI route, /runsync, 64 (tiny) and
#                128 (full) real-time WebSocket streams, and the same with CUDA_GRAPHS=1 (~2.5 min;
#                ~3.5 if it builds the full model)
# Time: the whole command, install included, ends within GPU_CHECK_TOTAL_S (default 570 s; the
# borrowed machines cut a command at 600 s); `worker` keeps GPU_CHECK_WORKER_S (default 220 s) of
# it, the engine parts get the rest (GPU_CHECK_BUDGET_S caps them further). Each part stops starting
# steps when its time is up and the JSON is rewritten as it goes, so a cut run keeps its figures.
# GPU_CHECK_WORKER_ARGS adds arguments for gpu_worker_check.py (e.g. "--env CUDA_GRAPHS=0
# --streams-full 256"). GPU_CHECK_CPU=1 runs the same parts on CPU with bf16 forced and tiny sizes
# (the tests do).
# What to carry to a machine without network: docs/PERFORMANCE.md, "GPU check".
set -uo pipefail
START=$SECONDS
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT_DIR="${1:-${OUT:-$ROOT/bench/results/gpu}}"
shift || true
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(correctness full worker)
for p in "${PARTS[@]}"; do
    case "$p" in correctness|full|worker) ;; *) echo "unknown part: $p (correctness, full, worker)" >&2; exit 2;; esac
done
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
JSON="$OUT_DIR/gpu_check.json"
rm -f "$JSON"  # `worker` adds its key to this file: never to a previous run's
. "$ROOT/bench/gpu_env.sh"
INSTALL_S=$((SECONDS - START))

TOTAL="${GPU_CHECK_TOTAL_S:-570}"; WORKER_S="${GPU_CHECK_WORKER_S:-220}"
FULL_MODEL="${FULL_MODEL:-$HOME/.cache/parakeet-test-models/full/parakeet_tdt_v3_random.nemo}"
LOGS="${GPU_CHECK_LOGS:-$(mktemp -d)}"
read -ra WARGS <<< "${GPU_CHECK_WORKER_ARGS:-}"
SMOKE=(); FULL_ARG=(--full-model "$FULL_MODEL")
# on CPU (tests) the GPU machine's time limits do not apply (the caller's timeout does), and the
# full-size model is neither built nor saved
[ "${GPU_CHECK_CPU:-0}" = 1 ] && { SMOKE=(--cpu-smoke); TOTAL=100000; FULL_ARG=(); }
left() { echo $((TOTAL - (SECONDS - START))); }
has() { local p; for p in "${PARTS[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
ENGINE_PARTS=(); for p in correctness full; do has "$p" && ENGINE_PARTS+=("$p"); done
log "parts: ${PARTS[*]} -> $JSON (install ${INSTALL_S} s, $(left) s left)"

rc_engine=skipped; rc_worker=skipped
if [ ${#ENGINE_PARTS[@]} -gt 0 ]; then
    L=$(left); has worker && L=$((L - WORKER_S))
    B=$((L - 30))  # imports before the budget's clock starts, and the last section's overrun
    [ -n "${GPU_CHECK_BUDGET_S:-}" ] && [ "${GPU_CHECK_BUDGET_S%.*}" -lt "$B" ] && B="${GPU_CHECK_BUDGET_S%.*}"
    if [ "$B" -lt 30 ]; then
        log "engine parts skipped: only $L s left for them"
    else
        log "engine parts: ${ENGINE_PARTS[*]}, budget $B s, cut at $((L - 10)) s"
        timeout -k 10 $((L - 10)) "$PY" bench/gpu_check.py --out "$JSON" --parts "${ENGINE_PARTS[@]}" \
            --budget-s "$B" "${SMOKE[@]}" "${FULL_ARG[@]}"
        rc_engine=$?
    fi
fi
if has worker; then
    L=$(left)
    if [ "$L" -lt 60 ]; then
        log "worker part skipped: only $L s left"
    else
        log "worker part: budget $((L - 25)) s, cut at $((L - 10)) s, worker logs in $LOGS"
        timeout -k 10 $((L - 10)) "$PY" bench/gpu_worker_check.py --out "$JSON" --key worker \
            --budget-s $((L - 25)) --log-dir "$LOGS" "${SMOKE[@]}" "${FULL_ARG[@]}" "${WARGS[@]}"
        rc_worker=$?
    fi
fi
rm -f "$OUT_DIR/gpu_check.tmp"
[ -f "$JSON" ] || { log "no result written"; exit 1; }
# how long the whole command took, so the 10-minute claim is checked on every run
"$PY" - "$JSON" "$INSTALL_S" $((SECONDS - START)) "$rc_engine" "$rc_worker" "${PARTS[*]}" <<'EOF'
import json, sys
path, install_s, total_s, rc_engine, rc_worker, parts = sys.argv[1:]
res = json.load(open(path))
res["command"] = {"parts": parts.split(), "install_s": int(install_s), "total_s": int(total_s),
                  "rc": {"engine": rc_engine, "worker": rc_worker}}
json.dump(res, open(path, "w"), indent=1)
EOF
log "done in $((SECONDS - START)) s (engine rc $rc_engine, worker rc $rc_worker): $JSON"
for rc in "$rc_engine" "$rc_worker"; do [ "$rc" != skipped ] && [ "$rc" != 0 ] && exit "$rc"; done
exit 0
