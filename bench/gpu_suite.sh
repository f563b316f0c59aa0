#!/usr/bin/env bash
# The whole benchmark suite on a GPU machine, in one command, the same on any GPU:
#
#   bash bench/gpu_suite.sh [OUT_DIR] [PART ...]
#
# The first GPU run is bench/gpu_check.sh (one call, < 7 min); this suite is the long follow-up,
# one or two parts per call (a borrowed machine allows 10 min a command, ~15 min a session).
# PARTS (default: all, in this order; estimates for one H100, not yet measured):
#   batch      bench/batch_bench.py: plain NeMo vs engine vs handler, full-size and tiny, 32 jobs (~4 min)
#   levers     bench/gpu_levers.py: BF16, SDPA, CUDA graphs, torch.compile, batch sizes 1..128 (~5 min)
#   stream     bench/stream_bench.py: 1..300 real-time streams, default settings (~5 min)
#   stream_ll  the same with the low-latency settings (~5 min)
#   long       bench/long_audio_bench.py: 1, 2, 3 h through local attention and chunking (~4 min)
#   startup    bench/startup_bench.py: time to ready, first vs steady request, warmup on/off, loaders (~4 min)
#   hotwords   bench/hotword_bench.py: decoding with 0/10/100/1000 hotwords, batch and streaming (~3 min)
# The full-size model is built once per machine (~1 min); the first part on a fresh machine pays it.
# Each part writes OUT_DIR/<part>.json (its benchmarks' JSON results); after every part,
# OUT_DIR/gpu_suite.json holds all part files present plus the machine's description. Parts
# can run in separate calls (a time-limited machine): the merge keeps earlier parts.
#
# What a bare machine lacks is installed first (bench/gpu_env.sh: carried wheels, speech,
# tokenizer); the full-size model (random weights, calibrated emission rate) is built once into
# FULL_MODEL (default ~/.cache/parakeet-test-models/full/parakeet_tdt_v3_random.nemo).
# OUT_DIR defaults to $OUT when set (the borrowed machines' result folder), else bench/results/gpu.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT_DIR="${1:-${OUT:-$ROOT/bench/results/gpu}}"
shift || true
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(batch levers stream stream_ll long startup hotwords)
mkdir -p "$OUT_DIR"
# logs stay out of OUT_DIR (a borrowed machine returns at most 8 files from $OUT): JSON only there
LOG_DIR="${GPU_SUITE_LOGS:-$(mktemp -d)}"
mkdir -p "$LOG_DIR"
PY="${PYTHON:-python3}"

. "$ROOT/bench/gpu_env.sh"

# ---- 3. the full-size model
FULL_MODEL="${FULL_MODEL:-$HOME/.cache/parakeet-test-models/full/parakeet_tdt_v3_random.nemo}"
if [ ! -f "$FULL_MODEL" ]; then
    log "building the full-size model into $FULL_MODEL"
    "$PY" tools/test_model/build_full.py --out "$FULL_MODEL" >&2 || exit 1
fi
TINY="$ROOT/tests/assets/tiny_parakeet.nemo"
# SUITE_QUICK=1: a few seconds a part (the smoke test runs it on CPU with FULL_MODEL=tiny)
if [ "${SUITE_QUICK:-0}" = 1 ]; then
    N=4; SIZES="1 2"; STREAMS="1"; HOURS="0.02"; PROG="0"; REQ=2; HOTWORDS="--quick"
else
    N=32; SIZES="1 2 4 8 16 32 64 128"; STREAMS="1 50 100 200 300"; HOURS="1 2 3"; PROG="1"; REQ=10
    HOTWORDS="--batch 32 --streams 32"
fi

# ---- 4. parts: each benchmark's last stdout line is its JSON result
run_json() {  # run_json NAME CMD...: run, keep the log, append {"NAME": result} to $PART_FILE.tmp
    local name="$1"; shift
    log "$name: $*"
    local logf="$LOG_DIR/$PART.$name.log"
    if "$@" >"$logf" 2>"$logf.err"; then
        "$PY" - "$name" "$logf" "$PART_FILE.tmp" <<'EOF'
import json, sys
name, logf, out = sys.argv[1:]
last = [l for l in open(logf).read().splitlines() if l.startswith("{")][-1]
acc = json.load(open(out)) if __import__("os").path.exists(out) else {}
acc[name] = json.loads(last)
json.dump(acc, open(out, "w"), indent=1)
EOF
    else
        log "$name FAILED (see $logf.err)"; tail -5 "$logf.err" >&2
        "$PY" -c "import json,os,sys; p=sys.argv[1]; a=json.load(open(p)) if os.path.exists(p) else {}; a[sys.argv[2]]={'failed': open(sys.argv[3]).read()[-1500:]}; json.dump(a, open(p,'w'), indent=1)" \
            "$PART_FILE.tmp" "$name" "$logf.err"
    fi
}

for PART in "${PARTS[@]}"; do
    PART_FILE="$OUT_DIR/$PART.json"
    rm -f "$PART_FILE.tmp"
    case "$PART" in
        batch)
            run_json full "$PY" bench/batch_bench.py --model "$FULL_MODEL" --n $N
            run_json tiny "$PY" bench/batch_bench.py --model "$TINY" --n $N ;;
        levers)
            run_json full "$PY" bench/gpu_levers.py --model "$FULL_MODEL" --n $N --batch-sizes $SIZES --repeats 2 ;;
        stream)
            export WS_MAX_SESSIONS=1000
            run_json default "$PY" bench/stream_bench.py --model "$FULL_MODEL" --streams $STREAMS --target 0.3 ;;
        stream_ll)
            export WS_MAX_SESSIONS=1000
            STREAM_CHUNK_S=0.16 STREAM_RIGHT_S=0.16 STREAM_EOU_MS=240 \
                run_json low_latency "$PY" bench/stream_bench.py --model "$FULL_MODEL" --streams $STREAMS --target 0.3 ;;
        long)
            run_json full "$PY" bench/long_audio_bench.py --model "$FULL_MODEL" --hours $HOURS --progress-hours $PROG ;;
        startup)
            run_json full "$PY" bench/startup_bench.py --model "$FULL_MODEL" --requests $REQ ;;
        hotwords)  # cost on the full-size model (random weights: no accuracy there), accuracy on the tiny one
            run_json full "$PY" bench/hotword_bench.py --model "$FULL_MODEL" --skip-accuracy $HOTWORDS
            run_json tiny "$PY" bench/hotword_bench.py --model "$TINY" $HOTWORDS ;;
        *) log "unknown part $PART"; continue ;;
    esac
    mv "$PART_FILE.tmp" "$PART_FILE"
    "$PY" - "$OUT_DIR" <<'EOF'
import json, pathlib, platform, subprocess, sys, time
import torch
out = pathlib.Path(sys.argv[1])
parts = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem != "gpu_suite"}
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
except OSError:
    smi = ""
machine = {"gpu": gpu, "nvidia_smi": smi, "torch": torch.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
(out / "gpu_suite.json").write_text(json.dumps({"machine": machine, "parts": parts}, indent=1))
EOF
    log "$PART done -> $PART_FILE"
done
log "results: $OUT_DIR/gpu_suite.json"
