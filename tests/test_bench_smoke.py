"""The benchmark scripts run (a few seconds each, tiny model); their figures live in docs/PERFORMANCE.md."""

import json
import subprocess
import sys

from conftest import ROOT, requires_model

pytestmark = requires_model


def _run(args):
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_batch_bench_runs_every_mode_and_reports_ratios():
    res = _run(["bench/batch_bench.py", "--n", "4"])
    assert set(res["modes"]) == {"nemo_one_by_one", "nemo_batched", "engine_single", "engine_concurrent",
                                 "handler_concurrent"}
    assert all(m["rtfx"] > 0 and 3 <= m["tokens_per_s"] <= 10 for m in res["modes"].values())
    assert "engine_concurrent/nemo_one_by_one" in res["speedup"]


def test_stream_bench_runs_one_stream():
    res = _run(["bench/stream_bench.py", "--streams", "1"])
    assert res["max_streams_within_target"] == 1


def test_startup_bench_compares_warmup_and_no_warmup():
    res = _run(["bench/startup_bench.py", "--requests", "2"])
    for case in ("warmup", "no_warmup"):
        assert 0 < res[case]["load_s"] <= res[case]["ready_s"] and res[case]["first_request_s"] > 0
