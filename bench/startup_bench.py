"""Start-up benchmark: time to ready, and the first request against the steady state, with and
without the warmup pass. Each case runs in a fresh process, so nothing is warm by accident.

    python bench/startup_bench.py                      # tiny model
    python bench/startup_bench.py --model PATH.nemo --requests 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r}); sys.path.insert(0, {tools!r})
import numpy as np, synth
from asr_engine import Engine, load_model
from settings import Settings
t_import = time.perf_counter() - t0
model = load_model({model!r})
t_load = time.perf_counter() - t0
s = Settings.from_env()
engine = Engine(type(s)(**{{**s.__dict__, "model": {model!r}, "warmup": {warmup}}}), model=model)
t_ready = time.perf_counter() - t0
clips = [u.audio for u in synth.make_utterances("en", ["en-us"], {n}, 77)]
lat = []
for c in clips:
    t = time.perf_counter(); engine.transcribe_batch([c]); lat.append(time.perf_counter() - t)
print(json.dumps({{"import_s": round(t_import, 2), "load_s": round(t_load, 2), "ready_s": round(t_ready, 2),
                  "first_request_s": round(lat[0], 4), "steady_request_s": round(float(np.median(lat[1:])), 4)}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))
    ap.add_argument("--requests", type=int, default=6)
    args = ap.parse_args()
    rows = {}
    for warmup in (True, False):
        code = CHILD.format(root=str(ROOT), tools=str(ROOT / "tools" / "test_model"), model=args.model,
                            warmup=warmup, n=max(args.requests, 2))
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(out.stderr[-2000:])
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["process_s"] = round(time.perf_counter() - t0, 2)
        row["first_over_steady"] = round(row["first_request_s"] / row["steady_request_s"], 2)
        rows["warmup" if warmup else "no_warmup"] = row
        print(("warmup   " if warmup else "no warmup"), row, flush=True)
    print(json.dumps({"model": args.model, **rows}))


if __name__ == "__main__":
    main()
