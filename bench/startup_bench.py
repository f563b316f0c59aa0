"""Start-up benchmark: time to ready, and the first request against the steady state, with and
without the warmup pass, and how the model is loaded: NeMo's own ``restore_from`` (before) against
``model_loader`` from the ``.nemo`` archive and from the folder the image unpacks it into. Each
case runs in a fresh process, so nothing is warm by accident.

    python bench/startup_bench.py                      # tiny model
    python bench/startup_bench.py --model PATH.nemo --requests 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from _paths import PATHS, ROOT, shown  # run as a script: puts the repository on sys.path

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import numpy as np, torch
from tools.test_model import synth
from parakeet_worker.engine.engine import Engine
from parakeet_worker.engine.model_loader import load_model
from parakeet_worker.config.settings import Settings
t_import = time.perf_counter() - t0
if {loader!r} == "nemo":
    from nemo.collections.asr.models import ASRModel
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = ASRModel.restore_from({model!r}, map_location=dev).eval()
else:
    model = load_model({model!r}, cache_dir={cache!r})
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
    # (name, loader, warmup): the default deployment is "extracted" with warmup on
    cases = [
        ("warmup", "extracted", True),
        ("no_warmup", "extracted", False),
        ("nemo_restore", "nemo", True),
        ("archive", "archive", True),
    ]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="startup_bench_") as cache:
        from parakeet_worker.engine import model_loader

        model_loader.extract(args.model, cache)  # what the image's bake step does
        for name, loader, warmup in cases:
            code = CHILD.format(
                model=args.model,
                warmup=warmup,
                n=max(args.requests, 2),
                loader=loader,
                cache=cache if loader == "extracted" else "",
            )
            t0 = time.perf_counter()
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(PATHS)}  # the child imports the repository
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
            if out.returncode != 0:
                sys.exit(out.stderr[-2000:])
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["loader"] = loader
            row["process_s"] = round(time.perf_counter() - t0, 2)
            row["first_over_steady"] = round(row["first_request_s"] / row["steady_request_s"], 2)
            rows[name] = row
            print(f"{name:<13}", row, flush=True)
    load = {name: row["load_s"] - row["import_s"] for name, row in rows.items()}
    rows["load_speedup"] = {
        "extracted_vs_nemo": round(load["nemo_restore"] / load["warmup"], 2),
        "archive_vs_nemo": round(load["nemo_restore"] / load["archive"], 2),
    }
    print("model load, NeMo restore_from / ours:", rows["load_speedup"], flush=True)
    print(json.dumps({"model": shown(args.model), **rows}))


if __name__ == "__main__":
    main()
