#!/usr/bin/env bash
# Fill .whl/ (repo root, git-ignored) with the wheels a bare GPU machine lacks, so that a command
# there can run, with no network:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#
# and then import and run nemo.collections.asr (restore a .nemo, transcribe, the streaming
# pipeline), this repo's modules and the benchmarks in bench/.
#
# Run on a machine that reaches the package registries:
#
#   bash bench/wheelhouse.sh            # download the pinned list, bench/wheel_requirements.txt
#   bash bench/wheelhouse.sh --refresh  # recompute that list first (see below), then download
#   bash bench/wheelhouse.sh --check    # only check what is in .whl/ (tags, sizes, budget)
#
# .whl/ is git-ignored: name it in the device tool's `carry` (24 MiB now; carry + tree <= 64 MiB).
#
# The list is what is actually imported, not the declared dependency closure of
# nemo_toolkit[asr] (far too big to carry): --refresh runs a probe in this machine's Python
# (PYTHON, default python3; everything installed) on the tiny test model: it imports
# nemo.collections.asr and its inference package and the repo's modules, runs NeMo's
# transcribe, bench/batch_bench.py (engine, RunPod handler), bench/stream_bench.py (the streaming
# pipeline over a real WebSocket), the RunPod worker on test_input.json, imports the other
# bench/*.py, decodes WAV/FLAC through audio_utils, and maps the imports to distributions (see
# refresh() below). Distributions the GPU machine already has (GPU_HAS below) are left out: a
# second torch or numpy in /tmp/site would shadow the system ones. Except where its version violates
# a specifier of the worker's or of a carried package (bench/gpu_packages.py; lightning: NeMo 3.0
# needs <=2.4.0): those are added to the list at the version installed here.
#
# Idempotent: wheels already in .whl/ at the pinned version are kept, other versions and
# packages not on the list are removed. Fails if a wheel is not installable on CPython 3.12
# manylinux x86-64, if one is a package the GPU machine has in a version that fits, if one it
# has in a version that does not is missing, or if the total is over WHEEL_BUDGET_MIB (default
# 30). A package with no such wheel on the index is built here from its sdist only if that is
# pure Python.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="$ROOT/bench/wheel_requirements.txt"
DEST="$ROOT/.whl"
PY="${PYTHON:-python3}"
BUDGET_MIB="${WHEEL_BUDGET_MIB:-30}"

# Python distributions installed on the GPU machine (x86-64, Python 3.12.3), with the versions known:
# bench/gpu_packages.py. Not carried, unless the machine's version violates a specifier of what is.
GPU_HAS="$("$PY" "$ROOT/bench/gpu_packages.py" names)"
export GPU_HAS

# The target: CPython 3.12 on glibc x86-64.
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)
EXTRA_PLATFORMS=(manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

mode=download
case "${1:-}" in
  "") ;;
  --refresh) mode=refresh ;;
  --check) mode=check ;;
  -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--refresh|--check]" >&2; exit 2 ;;
esac

# ---------------------------------------------------------------------------------------------
# --refresh: what the probe needs, minus what the GPU machine has
#
# The probe records every import statement (and importlib.import_module call) with the file and
# line that made it. Starting from the repo's code it follows the imports made by carried
# distributions only (what a package the GPU machine has imports is that machine's business),
# and not through optional imports: one inside `try: ... except ImportError` (or Exception) or
# under an availability check. Then it runs again with every loaded distribution it did not pick
# hidden from the repo and the picked ones (ModuleNotFoundError, find_spec -> None), as they will
# be missing on the GPU machine: the list is only written if that run passes too.
refresh() {
  local probe="$WORK/probe.py" out
  cat >"$probe" <<'EOF'
import ast, builtins, importlib, importlib.util, io, json, os, re, runpy, sys, types, warnings
from collections import defaultdict
from importlib import metadata
from pathlib import Path

ROOT, MODE = Path(sys.argv[1]).resolve(), sys.argv[2]
PLAN = json.loads(sys.argv[3]) if MODE == "verify" else {}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
GPU = {norm(n) for n in os.environ["GPU_HAS"].split()}

OWNER, DIRS = {}, {}  # file -> (dist, version); dir -> (dist, version)
for dist in metadata.distributions():
    key = (norm(dist.metadata["Name"]), dist.version)
    for f in dist.files or ():
        path = os.path.abspath(str(dist.locate_file(f)))
        OWNER[path] = key
        DIRS.setdefault(os.path.dirname(path), key)

PROBE = os.path.abspath(__file__)

def dist_of_file(fn):
    if not fn or fn.startswith("<"):
        return None
    fn = os.path.abspath(fn)
    if fn.startswith(str(ROOT) + os.sep) or fn == PROBE:
        return ("repo", "")
    return OWNER.get(fn)

def dist_of_module(name):
    mod = sys.modules.get(name)
    if mod is None:
        return None
    f = getattr(mod, "__file__", None)
    if f:
        return dist_of_file(f)
    try:  # a namespace package
        for p in mod.__path__:
            if os.path.abspath(p) in DIRS:
                return DIRS[os.path.abspath(p)]
    except (AttributeError, TypeError):
        pass
    return None

# ---- hooks: record (importer file, line, module), or in verify mode hide the dropped ones
EDGES = set()
HIDE = set(PLAN.get("hide", ()))  # top-level module names
CARRIED = set(PLAN.get("carried", ())) | {"repo"}
HIDDEN_HITS = set()

def hidden(name, frame):
    if name.split(".")[0] not in HIDE:
        return False
    d = dist_of_file(frame.f_code.co_filename)
    if d is None or d[0] in CARRIED:
        HIDDEN_HITS.add((name, frame.f_code.co_filename, frame.f_lineno))
        return True
    return False

_import, _import_module, _find_spec = builtins.__import__, importlib.import_module, importlib.util.find_spec

def hooked_import(name, globals=None, locals=None, fromlist=(), level=0):
    f = sys._getframe(1)
    if level == 0 and name:
        if HIDE and hidden(name, f):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the probe)", name=name)
        EDGES.add((f.f_code.co_filename, f.f_lineno, name))
    mod = _import(name, globals, locals, fromlist, level)
    for attr in fromlist or ():  # `from pkg import x`, x another distribution's module, pkg not the GPU's
        v = getattr(mod, attr, None) if attr != "*" else None
        if (isinstance(v, types.ModuleType) and v.__name__.split(".")[0] != mod.__name__.split(".")[0]
                and (dist_of_module(mod.__name__) or ("",))[0] not in GPU):
            if HIDE and hidden(v.__name__, f):
                raise ImportError(f"cannot import name {attr!r} (hidden by the probe)", name=mod.__name__)
            EDGES.add((f.f_code.co_filename, f.f_lineno, v.__name__))
    return mod

def hooked_import_module(name, package=None):
    if not name.startswith("."):
        f = sys._getframe(1)
        if HIDE and hidden(name, f):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the probe)", name=name)
        EDGES.add((f.f_code.co_filename, f.f_lineno, name))
    return _import_module(name, package)

def hooked_find_spec(name, package=None):
    if HIDE and not name.startswith(".") and hidden(name, sys._getframe(1)):
        return None
    return _find_spec(name, package)

builtins.__import__, importlib.import_module, importlib.util.find_spec = (
    hooked_import, hooked_import_module, hooked_find_spec)

# ---- the workload
os.chdir(ROOT)
for p in (ROOT, ROOT / "tools" / "test_model", ROOT / "bench"):
    sys.path.insert(0, str(p))
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)  # light on the CPU: the probe needs the code paths, not speed

import nemo.collections.asr  # noqa: F401
import nemo.collections.asr.inference  # noqa: F401
import asr_engine, audio_utils, client, rp_handler, websocket_handler  # noqa: F401,E401
import parakeet_worker.engine.streaming, parakeet_worker.serving.websocket_job  # noqa: F401,E401
import parakeet_worker.serving.openai.routes, parakeet_worker.serving.openai.realtime  # noqa: F401,E401
import parakeet_worker.serving.deepgram.routes, parakeet_worker.serving.formatting  # noqa: F401,E401
import jiwer, synth, tdt_loss  # noqa: F401,E401  test and benchmark helpers
import psutil  # noqa: F401,E401  benchmarks may measure with it (matplotlib too: both on the GPU machine)

# plain NeMo: restore the .nemo, transcribe an array (greedy TDT, timestamps)
import numpy as np
from nemo.collections.asr.models import ASRModel
model = ASRModel.restore_from(str(ROOT / "tests/assets/tiny_parakeet.nemo"), map_location="cpu").eval()
clip = (0.05 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32)
model.transcribe([clip], batch_size=1, timestamps=True, verbose=False)
del model

# audio_utils: WAV and FLAC through soundfile, resampled by soxr
import soundfile as sf
for fmt, rate in (("WAV", 44100), ("FLAC", 22050)):
    buf = io.BytesIO()
    sf.write(buf, clip, rate, format=fmt)
    audio_utils.decode_audio(buf.getvalue(), 60.0)

def run(path, *args, main=True):
    argv, sys.argv = sys.argv, [path, *args]
    try:
        runpy.run_path(str(ROOT / path), run_name="__main__" if main else "probe")
    except SystemExit as e:
        if e.code:
            raise
    finally:
        sys.argv = argv

run("bench/batch_bench.py", "--n", "2")         # NeMo transcribe, Engine, rp_handler.handler
run("bench/stream_bench.py", "--streams", "1")  # websockets server + client, the streaming pipeline
for script in sorted((ROOT / "bench").glob("*.py")):  # the others: their module-level imports
    if script.name not in ("batch_bench.py", "stream_bench.py"):
        run(f"bench/{script.name}", main=False)
# the RunPod worker itself: runpod.serverless.start on test_input.json (local test mode)
os.environ["PARAKEET_MODEL"] = str(ROOT / "tests/assets/tiny_parakeet.nemo")
run("rp_handler.py", "--test_input", (ROOT / "test_input.json").read_text())

# ---- analysis
builtins.__import__, importlib.import_module, importlib.util.find_spec = _import, _import_module, _find_spec
EDGES = set(EDGES)

def loaded():
    out = set()
    for name in list(sys.modules):
        d = dist_of_module(name)
        if d and d[0] != "repo":
            out.add(d)
    return out

if MODE == "verify":
    print("PROBE-RESULT " + json.dumps({"hidden_hits": sorted(HIDDEN_HITS)}))
    sys.exit(0)

TREES = {}
SOFT_EXC = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
SOFT_IF = re.compile(r"avail|find_spec|HAVE_|_installed|TYPE_CHECKING", re.I)

def optional(fn, line):
    """Is the import at fn:line guarded (try/except ImportError, an availability check)?"""
    if fn not in TREES:
        try:
            TREES[fn] = ast.parse(open(fn, encoding="utf-8").read())
        except Exception:
            TREES[fn] = None
    tree = TREES[fn]
    if tree is None:
        return False
    def walk(node, guarded):
        for field, value in ast.iter_fields(node):
            for child in value if isinstance(value, list) else [value]:
                if not isinstance(child, ast.AST) or not hasattr(child, "lineno"):
                    continue
                if not (child.lineno <= line <= (child.end_lineno or child.lineno)):
                    continue
                g = guarded
                if isinstance(node, ast.Try) and field == "body":
                    for h in node.handlers:
                        names = [] if h.type is None else [
                            getattr(e, "id", getattr(e, "attr", "")) for e in
                            (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])]
                        if h.type is None or SOFT_EXC & set(names):
                            g = True
                if isinstance(node, ast.If) and field == "body" and SOFT_IF.search(ast.unparse(node.test)):
                    g = True
                if isinstance(node, ast.With) and field == "body" and any(
                        "suppress" in ast.unparse(i.context_expr) and "Error" in ast.unparse(i.context_expr)
                        for i in node.items):
                    g = True
                if isinstance(child, (ast.Import, ast.ImportFrom, ast.Expr, ast.Assign, ast.Return)):
                    return g
                r = walk(child, g)
                if r is not None:
                    return r
        return None
    return bool(walk(tree, False))

def where(fn):
    fn = os.path.abspath(fn)
    return ("probe" if fn == PROBE else os.path.relpath(fn, ROOT) if fn.startswith(str(ROOT) + os.sep)
            else fn.split("-packages/")[-1])

adj = defaultdict(set)  # importer dist -> {(imported dist, optional, where)}
for fn, line, name in EDGES:
    src = dist_of_file(fn)
    if src is None:
        continue
    parts = name.split(".")
    dst = None
    for i in range(len(parts), 0, -1):  # the deepest loaded module of the dotted name
        dst = dist_of_module(".".join(parts[:i]))
        if dst:
            break
    if dst is None or dst[0] == src[0] or dst[0] == "repo":
        continue
    adj[src[0]].add((dst, optional(fn, line), f"{where(fn)}:{line}"))

carried, soft, todo = {}, defaultdict(list), ["repo"]
while todo:
    d = todo.pop()
    for dst, opt, where in sorted(adj[d]):
        if dst[0] in GPU:
            continue
        if opt:
            soft[dst].append(where)
        elif dst[0] not in {c[0] for c in carried}:
            carried[dst] = where
            todo.append(dst[0])
carried_names = {c[0] for c in carried}
others = {d for d in loaded() if d[0] not in GPU and d[0] not in carried_names}
pkgs = metadata.packages_distributions()
drop_names = {d[0] for d in others}
hide = sorted(top for top, ds in pkgs.items()
              if ds and all(norm(x) in drop_names for x in ds) and not top.startswith("_distutils"))
print("PROBE-RESULT " + json.dumps({
    "carried": sorted([n, v, w] for (n, v), w in carried.items()),
    "optional": sorted([n, v, sorted(set(soft[(n, v)]))[:2]] for (n, v) in others if (n, v) in soft),
    "gpu_side": sorted([n, v] for (n, v) in others if (n, v) not in soft),
    "hide": hide}))
EOF
  echo "probe: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')" >&2
  out="$(OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PY" "$probe" "$ROOT" record 2>"$WORK/err")" || {
    tail -40 "$WORK/err" >&2; echo "probe failed" >&2; return 1; }
  out="$(grep '^PROBE-RESULT ' <<<"$out" | cut -d' ' -f2-)"
  echo "probe: again, with the distributions it did not pick hidden" >&2
  local plan verify
  plan="$("$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); print(json.dumps({"hide": r["hide"], "carried": [c[0] for c in r["carried"]]}))' "$out")"
  verify="$(OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PY" "$probe" "$ROOT" verify "$plan" 2>"$WORK/err")" || {
    tail -40 "$WORK/err" >&2; echo "probe failed with the unpicked distributions hidden: a needed one was dropped" >&2; return 1; }
  verify="$(grep '^PROBE-RESULT ' <<<"$verify" | cut -d' ' -f2-)"
  "$PY" - "$REQ" "$out" "$verify" "$ROOT/bench" <<'EOF'
import json, sys
from importlib import metadata
req, r, v = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
sys.path.insert(0, sys.argv[4])
import gpu_packages
from packaging.specifiers import SpecifierSet
# the GPU machine's packages that a carried one's specifier excludes in the machine's version
must = {}
for c in gpu_packages.conflicts(carried=[n for n, _, _ in r["carried"]]):
    must.setdefault(c.name, []).append(c)
for n, cs in must.items():
    here = metadata.version(n)
    if not all(SpecifierSet(c.spec).contains(here, prereleases=True) for c in cs):
        sys.exit(f"{n} {here} here violates " + ", ".join(f"{c.by}'s {c.spec}" for c in cs)
                 + ": install one that fits, then refresh again")
with open(req, "w") as f:
    f.write("# Wheels carried to the GPU machine; bench/wheelhouse.sh downloads them into .whl/.\n"
            "# Written by `bash bench/wheelhouse.sh --refresh` (its probe: see the script), versions as\n"
            "# installed on the machine that ran it. Edit by hand only with care.\n"
            "# name==version  # the first import that needs it\n")
    for n, ver, where in r["carried"]:
        f.write(f"{n}=={ver}  # {where}\n")
    if must:
        f.write("\n# The GPU machine has these, but in a version that a specifier of the above excludes\n"
                "# (bench/gpu_packages.py): carried at the version installed here, which fits.\n")
    for n, cs in sorted(must.items()):
        why = "; ".join(f"{c.by} needs {c.spec}" for c in cs)
        f.write(f"{n}=={metadata.version(n)}  # there: {cs[0].have}; {why}\n")
    f.write("\n# Loaded on the probe's machine but not carried; the probe passed again with them hidden:\n"
            "# - optional imports (try/except ImportError, availability checks) from the code above:\n")
    for n, ver, where in r["optional"]:
        f.write(f"#   {n}=={ver}  ({', '.join(where)})\n")
    f.write("# - imported only by packages the GPU machine already has (its versions bring their own):\n")
    f.write("#   " + " ".join(f"{n}=={ver}" for n, ver in r["gpu_side"]) + "\n")
print(f"probe: {len(r['carried'])} to carry, and {len(must)} the GPU machine has in a version excluded; "
      f"{len(r['optional'])} optional, {len(r['gpu_side'])} only imported by the GPU machine's own packages; "
      f"{len(v['hidden_hits'])} imports hidden in the second run -> {req}", file=sys.stderr)
EOF
}

# ---------------------------------------------------------------------------------------------
# the wheels
pinned() {  # name==version lines of the list
  sed -e 's/#.*//' -e 's/[[:space:]]//g' "$REQ" | grep -v '^$'
}

wheel_info() {  # "file canonical-name version" for each wheel in .whl/
  "$PY" - "$DEST" <<'EOF'
import sys
from pathlib import Path
from packaging.utils import canonicalize_name, parse_wheel_filename
for p in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, ver, _, _ = parse_wheel_filename(p.name)
    print(p.name, canonicalize_name(name), ver)
EOF
}

download() {
  local spec="$1" plats tmp sdist
  plats=()
  for p in "${PLATFORMS[@]}"; do plats+=(--platform "$p"); done
  if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       "${plats[@]}" -d "$DEST" "$spec" 2>/dev/null; then return 0; fi
  for p in "${EXTRA_PLATFORMS[@]}"; do plats+=(--platform "$p"); done
  if "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       "${plats[@]}" -d "$DEST" "$spec" 2>/dev/null; then
    echo "  $spec: only a newer manylinux tag (${EXTRA_PLATFORMS[*]})" >&2; return 0; fi
  # No wheel on the index: build one from the sdist, but only a pure-Python one (nothing is
  # compiled here: an sdist with native sources is refused before building).
  echo "  $spec: no cp312 manylinux wheel on the index; trying its sdist" >&2
  tmp="$(mktemp -d -p "$WORK")"
  # --no-build-isolation: no build backend is fetched (and built) for this; a missing one fails fast
  "$PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$tmp" "$spec" >"$tmp/log" 2>&1 || {
    grep -E "Error|error:" "$tmp/log" | tail -2 >&2; return 1; }
  sdist="$(ls "$tmp"/*.tar.gz "$tmp"/*.zip 2>/dev/null | head -1)"
  "$PY" - "$sdist" <<'EOF' || return 1
import sys, tarfile, zipfile
sdist = sys.argv[1]
names = zipfile.ZipFile(sdist).namelist() if sdist.endswith(".zip") else tarfile.open(sdist).getnames()
native = [n for n in names if n.endswith((".c", ".cc", ".cpp", ".cxx", ".pyx", ".rs", ".f90", "Cargo.toml"))]
if native:
    sys.exit(f"  {sdist.rsplit('/', 1)[-1]} has native sources ({', '.join(native[:3])}, ...): not building it")
EOF
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$tmp/wheel" "$sdist" >&2 || return 1
  if ls "$tmp"/wheel/*-none-any.whl >/dev/null 2>&1; then
    mv "$tmp"/wheel/*.whl "$DEST"/; echo "  $spec: built a pure-Python wheel from its sdist" >&2
  else
    echo "  $spec: its sdist built a platform wheel: cannot carry it" >&2; return 1
  fi
}

sync_wheels() {
  mkdir -p "$DEST"
  local -A want=() have=()
  local spec n v f fail=0
  for spec in $(pinned); do
    n="$("$PY" -c 'import sys; from packaging.utils import canonicalize_name as c; print(c(sys.argv[1]))' "${spec%%==*}")"
    want[$n]="${spec#*==}"
  done
  while read -r f n v; do  # drop other versions and packages no longer on the list
    [[ -z "$f" ]] && continue
    if [[ "${want[$n]:-}" == "$v" && -z "${have[$n]:-}" ]]; then have[$n]=1; else rm -f "$DEST/$f"; echo "removed $f"; fi
  done < <(wheel_info)
  for n in "${!want[@]}"; do
    [[ -n "${have[$n]:-}" ]] && continue
    echo "downloading $n==${want[$n]}"
    download "$n==${want[$n]}" || { echo "FAILED: $n==${want[$n]}" >&2; fail=1; }
  done
  return $fail
}

# every wheel installable on cp312 manylinux x86-64; none the GPU machine has, unless its version there
# violates a specifier of the carried wheels (their own metadata), and then that one is there, in a
# version that fits; the budget
check() {
  "$PY" - "$DEST" "$REQ" "$BUDGET_MIB" "$ROOT/bench" <<'EOF'
import os, sys
from pathlib import Path
from packaging import tags
from packaging.utils import canonicalize_name, parse_wheel_filename
dest, req, budget = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
sys.path.insert(0, sys.argv[4])
import gpu_packages as gp
plats = [f"manylinux_2_{n}_x86_64" for n in range(35, 16, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"]
ok_tags = set(tags.cpython_tags((3, 12), abis=["cp312", "abi3", "none"], platforms=plats))
ok_tags |= set(tags.compatible_tags((3, 12), "cp312", plats))
gpu = {canonicalize_name(n) for n in os.environ["GPU_HAS"].split()}
want = {canonicalize_name(l.split("#")[0].strip().split("==")[0])
        for l in open(req) if l.split("#")[0].strip()}
bad, total, seen = [], 0, set()
rows = []
for p in sorted(dest.glob("*.whl")):
    name, ver, _, wtags = parse_wheel_filename(p.name)
    name = canonicalize_name(name)
    size = p.stat().st_size
    total += size
    rows.append((size, p.name))
    if not (wtags & ok_tags):
        bad.append(f"{p.name}: not installable on CPython 3.12 manylinux x86-64")
    if name in seen:
        bad.append(f"{p.name}: a second version of {name}")
    seen.add(name)
requires, carried = gp.wheel_requires(dest), gp.wheel_versions(dest)
must = {}  # the GPU machine's packages that a carried one's specifier excludes in the machine's version
for c in gp.conflicts(gp.GPU_VERSIONS, carried, requires):
    must.setdefault(c.name, []).append(c)
for name in sorted((seen & gpu) - set(must)):
    bad.append(f"{name} {carried[name]}: the GPU machine has {name}, in a version no specifier excludes "
               "(it would shadow it)")
for name, cs in sorted(must.items()):
    if name in carried:
        print(f"carried over the GPU machine's: {name} {carried[name]} ({'; '.join(map(str, cs))})")
    else:
        bad.append(f"not carried: {'; '.join(map(str, cs))}: add {name} to {os.path.basename(req)}")
for c in gp.conflicts({**gp.GPU_VERSIONS, **carried}, carried, requires):  # with the wheels installed
    if c.name in carried:
        bad.append(f"the carried {c}")
n_unknown = len(gp.unknown(gp.GPU_VERSIONS, carried, requires))
print(f"{n_unknown} specifiers bound GPU packages of unknown version (python3 bench/gpu_packages.py report; "
      "bench/gpu_env.sh checks them there)")
missing = sorted(want - seen)
if missing:
    bad.append("no wheel for: " + ", ".join(missing))
for size, n in sorted(rows, reverse=True):
    print(f"{size / 2**20:8.2f} MiB  {n}")
print(f"{len(rows)} wheels, total {total / 2**20:.2f} MiB (budget {budget:g} MiB)")
if total > budget * 2**20:
    bad.append(f"total {total / 2**20:.2f} MiB is over the budget of {budget:g} MiB")
for b in bad:
    print("ERROR: " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
}

if [[ "$mode" == refresh ]]; then refresh; fi
[[ -f "$REQ" ]] || { echo "$REQ missing: run with --refresh" >&2; exit 1; }
if [[ "$mode" != check ]]; then sync_wheels || { echo "some downloads failed" >&2; check || true; exit 1; }; fi
check
