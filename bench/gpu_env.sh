# Sourced by bench/gpu_check.sh and bench/gpu_suite.sh: make a bare GPU machine ready, offline.
# - Python packages: if NeMo is not importable, from the wheels carried in .whl/ (installed into
#   /tmp/site, ~20-40 s; fill .whl/ elsewhere with `bash bench/wheelhouse.sh`), else from
#   requirements.txt (needs the network);
# - speech: without espeak-ng, the clips carried in .bench_audio/ (`python bench/prepare_audio.py`);
# - the full-size model's tokenizer: carried in .bench_model/ if present (saves training it there).
# Needs ROOT and PY; defines log().
log() { echo "[$(basename "$0") $(date +%H:%M:%S)] $*" >&2; }

if ! "$PY" -c "import nemo.collections.asr" 2>/dev/null; then
    if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
        log "installing $(ls "$ROOT"/.whl/*.whl | wc -l) carried wheels into /tmp/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site "$ROOT"/.whl/*.whl >&2 || exit 1
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
        # The versions there now (carried first) against the specifiers of what is carried: logs what
        # still conflicts; the import check below decides.
        "$PY" "$ROOT/bench/gpu_packages.py" runtime /tmp/site 2>&1 | while IFS= read -r line; do log "$line"; done \
            || log "specifier check did not run"
    else
        log "installing requirements.txt from the package index"
        "$PY" -m pip install -q -r "$ROOT/requirements.txt" >&2 || exit 1
    fi
fi
"$PY" -c "import nemo.collections.asr, runpod, websockets, soundfile, soxr, jiwer" || { log "imports fail"; exit 1; }

if ! command -v espeak-ng >/dev/null; then
    [ -d "$ROOT/.bench_audio" ] || { log "no espeak-ng and no .bench_audio/: run python bench/prepare_audio.py where espeak-ng is"; exit 1; }
    export ESPEAK_CACHE="$ROOT/.bench_audio"
fi
[ -d "$ROOT/.bench_model" ] && export TEST_MODEL_CACHE="$ROOT/.bench_model"
export PYTHONUNBUFFERED=1
