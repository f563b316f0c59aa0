"""A seconds-long run of bench/soak.py: a real worker process under mixed, hostile and abrupt
traffic, then SIGTERM. The 30-minute figures are in docs/RELIABILITY.md; this proves the driver
and every end-of-run check still work (zero failed valid jobs, a clean drain, exit 0)."""

import json
import subprocess
import sys

from tests.helpers import ROOT, TINY_MODEL, requires_model


@requires_model
def test_soak_smoke(tmp_path):
    out = tmp_path / "soak"
    proc = subprocess.run(
        [
            sys.executable,
            "bench/soak.py",
            "--model",
            str(TINY_MODEL),
            "--seconds",
            "12",
            "--streams",
            "1",
            "--batch-clients",
            "1",
            "--hostile-every",
            "1",
            "--sentences",
            "1",
            "--sample-s",
            "4",
            "--window-s",
            "6",
            "--drain-timeout",
            "20",
            "--no-plots",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["valid_requests"] >= 2 and summary["valid_failed"] == 0, summary["failures"]
    assert summary["hostile_requests"] >= 2 and summary["hostile_wrong_code"] == 0, summary["failures"]
    assert all(summary["drain"]["checks"].values()), summary["drain"]
    assert summary["drain"]["exit_code"] == 0
    assert summary["start"]["rss_mb"] > 0 and summary["end"]["fds"] > 0
