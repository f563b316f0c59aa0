"""The benchmark scripts run (a few seconds each, tiny model); their figures live in docs/PERFORMANCE.md.

Speed cannot be asserted on a shared CPU (a busy one runs the tiny model below real time), so these
check that every figure is there, positive and finite, and that the transcripts each benchmark times
are right (WER and token-rate bounds).
"""

import json
import math
import subprocess
import sys

from tests.helpers import ROOT, requires_model

pytestmark = requires_model


def _run(args):
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def sane(x, lo=1e-6, hi=1e6) -> bool:
    """A finite number within [lo, hi] (by default: positive, and no overflow or division by ~0)."""
    return isinstance(x, (int, float)) and math.isfinite(x) and lo <= x <= hi


def test_batch_bench_runs_every_mode_and_reports_ratios():
    res = _run(["bench/batch_bench.py", "--n", "4"])
    assert res["clips"] == 4 and sane(res["audio_seconds"], 4.0, 60.0) and res["device"]
    assert set(res["modes"]) == {
        "nemo_one_by_one",
        "nemo_batched",
        "engine_single",
        "engine_concurrent",
        "handler_concurrent",
        "handler_no_expecting",
    }
    for name, m in res["modes"].items():
        assert sane(m["rtfx"]) and sane(m["seconds"]), (name, m)  # and every mode transcribes right:
        assert 3 <= m["tokens_per_s"] <= 10 and m["wer"] <= 0.15, (name, m)
    for mode in ("engine_concurrent", "handler_concurrent", "handler_no_expecting"):
        assert res["modes"][mode]["latency_p50"] <= res["modes"][mode]["latency_p95"]
    assert set(res["speedup"]) == {
        "engine_single/nemo_one_by_one",
        "engine_concurrent/nemo_one_by_one",
        "engine_concurrent/nemo_batched",
        "handler_concurrent/nemo_one_by_one",
        "handler_concurrent/handler_no_expecting",
    }
    assert all(sane(r) for r in res["speedup"].values()), res["speedup"]


def test_stream_bench_runs_one_stream():
    res = _run(["bench/stream_bench.py", "--streams", "1", "--latency", "balanced", "low"])
    # whether the latency target is met depends on how busy the CPU is: reported, not asserted
    assert res["max_streams_within_target"] in (0, 1) and res["target_p95_s"] == 2.0
    level, low = res["levels"]
    assert (level["latency"], low["latency"]) == ("balanced", "low") and low["first_final_missing"] == 0
    assert level["streams"] == 1 and level["first_final_missing"] == 0
    assert sane(level["eos_to_final_p50"], 0.0) and level["steps"] >= 1
    assert sane(level["words_per_s"], 1.0, 5.0) and sane(level["rtf"])
    assert set(res["stream_config"]) == {"chunk_s", "left_s", "right_s", "eou_ms"}


def test_startup_bench_compares_warmup_and_loaders():
    res = _run(["bench/startup_bench.py", "--requests", "2"])
    for case in ("warmup", "no_warmup", "nemo_restore", "archive"):
        r = res[case]
        assert 0 < r["import_s"] <= r["load_s"] <= r["ready_s"] <= r["process_s"], (case, r)
        assert sane(r["first_request_s"]) and sane(r["steady_request_s"]) and sane(r["first_over_steady"]), (case, r)
    assert all(sane(v) for v in res["load_speedup"].values()), res["load_speedup"]


def test_long_audio_bench_merges_windows_without_losing_words_and_posts_progress():
    res = _run(["bench/long_audio_bench.py", "--hours", "0.02", "--progress-hours", "0.01"])
    runs = {r["mode"]: r for r in res["runs"]}
    assert set(runs) == {"local", "chunked"}
    assert runs["local"]["windows"] == 1 and runs["chunked"]["windows"] >= 3
    chunked = runs["chunked"]
    assert chunked["words_both_windows_heard"] > 0
    assert chunked["lost_by_merge"] == 0 and chunked["doubled_by_merge"] == 0
    assert all(r["wer"] < 0.2 and 3 <= r["tokens_per_s"] <= 10 and sane(r["rtfx"]) for r in runs.values())
    assert all(sane(r["working_mb"], 0.01, 4096) for r in runs.values())
    prog = res["progress"]["runs"]
    assert prog["none"]["posts_received"] == 0
    # every update the handler sent reached the (loopback) RunPod stand-in, the last one at 100%
    assert prog["every_window"]["updates"] == prog["every_window"]["posts_received"] >= 2


def test_gpu_levers_run_on_cpu_and_skip_cuda_only_levers():
    res = _run(["bench/gpu_levers.py", "--n", "2", "--batch-sizes", "1", "2", "--repeats", "1"])
    lev = res["levers"]
    assert sane(lev["sdpa"]["speedup_on_vs_off"]) and sane(lev["lean_masks"]["speedup_on_vs_off"])
    assert [r["batch"] for r in lev["batch"]] == [1, 2] and all(sane(r["rtfx"]) for r in lev["batch"])
    # every lever and batch size still transcribes: speech-like token rates (real speech: 3-8 per s)
    rates = [r["tokens_per_s"] for r in lev["batch"]] + [
        lev[k][s]["tokens_per_s"] for k in ("sdpa", "lean_masks") for s in ("off", "on")
    ]
    assert all(3 <= r <= 10 for r in rates), rates
    for name in ("precision", "cuda_graphs", "compile"):
        assert lev[name] == {"skipped": "needs CUDA"}


def test_gpu_suite_runs_parts_merges_json_and_plots(tmp_path):
    import os

    env = {**os.environ, "SUITE_QUICK": "1", "FULL_MODEL": str(ROOT / "tests" / "assets" / "tiny_parakeet.nemo")}
    out = subprocess.run(
        ["bash", "bench/gpu_suite.sh", str(tmp_path), "levers", "startup"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    suite = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert set(suite["parts"]) == {"levers", "startup"} and suite["machine"]["torch"]
    assert sane(suite["parts"]["levers"]["full"]["levers"]["batch"][0]["rtfx"])
    startup = suite["parts"]["startup"]["full"]["warmup"]
    assert 0 < startup["load_s"] <= startup["ready_s"]
    plots = subprocess.run(
        [
            sys.executable,
            "bench/plots.py",
            str(tmp_path / "gpu_suite.json"),
            "--out",
            str(tmp_path / "img"),
            "--tag",
            "t",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert plots.returncode == 0, plots.stderr[-2000:]
    assert (tmp_path / "img" / "rtfx_vs_batch_t.png").stat().st_size > 5000


def test_hotword_bench_reports_costs_and_rates():
    res = _run(["bench/hotword_bench.py", "--quick"])
    assert res["device"] and set(res["tree_build"]) == {"10", "100", "1000"}
    for part, key in (("batch", "decoding_vs_none"), ("batch", "whole_pass_vs_none"), ("streaming", "step_vs_none")):
        ratios = res[part][key]
        assert ratios["none"] == 1.0 and {"10_each_own", "100_each_own", "1000_each_own"} <= set(ratios), (part, ratios)
        assert all(sane(v) for v in ratios.values()), (part, ratios)
    for mode in ("batch", "streaming"):
        a = res["accuracy"][mode]
        assert a["sentences"] == 6 and a["wrong"] + a["right"] <= 6, a
        assert 0 <= a["fix_rate"] <= 1 and 0 <= a["harm_rate"] <= 1 and a["fixed"] <= a["wrong"], a


def _gpu_check(tmp_path, *parts):
    """bench/gpu_check.sh on CPU (GPU_CHECK_CPU=1): one JSON and nothing else in the output folder."""
    import os

    out_dir = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_CPU": "1", "GPU_CHECK_LOGS": str(tmp_path / "logs")}
    out = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(out_dir), *parts],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert [p.name for p in out_dir.iterdir()] == ["gpu_check.json"]
    res = json.loads((out_dir / "gpu_check.json").read_text())
    assert res["command"]["parts"] == list(parts) and res["command"]["total_s"] >= 0
    return res


def test_gpu_check_cpu_safe_parts_in_bf16(tmp_path):
    """bench/gpu_check.sh's engine sections on CPU (bf16 forced, the tiny model standing in for the
    full one): correctness holds; the OOM injection ran in its own process."""
    res = _gpu_check(tmp_path, "correctness", "full")
    sec = res["sections"]
    errors = {k: v["error"] for k, v in sec.items() if "error" in v}
    assert not errors, errors
    assert sec["versions"]["torch"] and sec["versions"]["nemo"]
    off = sec["offline"]
    assert off["dtype"] == "torch.bfloat16" and off["encoder_dtype"] == "torch.bfloat16"
    assert off["joint_input_dtypes"] == ["torch.float32"]
    assert set(off["preprocessor_buffers"].values()) == {"torch.float32"}
    assert off["wer_device_vs_ref"] <= 0.1 and off["wer_device_vs_cpu_fp32"] <= 0.1
    st = sec["streaming"]
    assert st["ok"] and st["failed_streams"] == 0 and st["offline_identical_after_streaming"]
    assert st["joint_input_dtypes"] == ["torch.float32"] and st["wer_vs_ref"] <= 0.2
    assert sec["cuda_graphs"]["recaptures_after_warmup"] == 0
    assert sec["oom_injected"]["ooms_raised"] >= 1 and sec["oom_injected"]["recovered_identical"]
    assert sec["oom_injected"]["process_s"] >= sec["oom_injected"]["seconds"]
    assert list(sec)[-2:] == ["oom_injected", "real_oom"]  # the risky sections after every figure
    assert sec["attention_switch"]["enter_and_leave_s"]
    rows = sec["batch_rtfx"]["rows"]
    assert {r["dtype"] for r in rows} == {"torch.bfloat16", "torch.float32"} and all(r["rtfx"] > 0 for r in rows)
    assert all(r["failed"] == 0 and r["frames_per_step"] >= 1 for r in sec["stream_steps"]["rows"])
    for cuda_only in ("memory", "real_oom", "compile"):
        assert sec[cuda_only] == {"skipped": "needs CUDA", "seconds": sec[cuda_only]["seconds"]}


def test_gpu_check_worker_part_drives_the_real_worker(tmp_path):
    """The `worker` part on CPU: rp_handler.py in load-balancer and queue mode (and the CUDA-graphs
    variant, a no-op on CPU), tiny model, 2 real-time WebSocket streams, driven from another
    process; every worker exits 0 on SIGTERM."""
    from tests.helpers import SAMPLE_TEXT

    res = _gpu_check(tmp_path, "worker")
    w = res["worker"]
    assert w["mode"] == "cpu-smoke" and w["reference"] == SAMPLE_TEXT
    assert "skipped" in w["models"]["full"]
    tiny = w["models"]["tiny"]
    assert set(tiny["started_together"]) == {"load_balancer", "queue", "load_balancer_graphs_on"}
    lb, q, graphs = tiny["load_balancer"], tiny["queue"], tiny["load_balancer_graphs_on"]
    assert graphs["env"] == {"CUDA_GRAPHS": "1"} and graphs["streams"]["ok"] == 2, graphs.get("streams")
    assert 0 < lb["ready"]["ready_s"] and 0 < q["ready"]["ready_s"]
    assert lb["openai"]["status"] == 200 and lb["openai"]["text"] == SAMPLE_TEXT, lb["openai"]
    st = lb["streams"]
    assert st["streams"] == 2 and st["ok"] == 2 and st["done"] == 2 and st["with_final"] == 2, st
    assert not st["errors"] and st["wer_mean"] <= 0.2, st
    assert st["final_latency_p50_s"] is not None and st["final_latency_p50_s"] <= st["final_latency_p95_s"] < 10, st
    assert lb["alive_after_streams"] and lb["after"]["ping"] == 200
    assert any(k.startswith("asr_requests") for k in lb["after"]["metrics"]), lb["after"]["metrics"]
    assert q["runsync"]["status"] == "COMPLETED" and q["runsync"]["text"] == SAMPLE_TEXT, q["runsync"]
    for mode in (lb, q, graphs):
        assert mode["sigterm"]["exit_code"] == 0 and not mode["sigterm"].get("killed"), mode["sigterm"]
        assert mode["log_tail"] and mode["log_errors"] == [], mode["log_errors"]
