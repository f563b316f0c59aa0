"""The deployment files stay true: the Dockerfile's steps run, RunPod's convention files are valid
against the handler's schema, and the SDK's own local test run (test_input.json) transcribes."""

import json
import os
import re
import subprocess
import sys

import jiwer
import pytest

import rp_handler
from parakeet_worker.audio.formats import decode_base64
from parakeet_worker.config.errors import ASRError
from tests.helpers import ROOT, TINY_MODEL, requires_model

pytestmark = requires_model

ENV = {**os.environ, "PARAKEET_MODEL": str(TINY_MODEL), "DEVICE": "cpu", "PYTHON": sys.executable}


def test_dockerfile_runs_only_steps_that_exist():
    dockerfile = (ROOT / "Dockerfile").read_text()
    script = (ROOT / "docker" / "setup.sh").read_text()
    steps = re.findall(r"bash docker/setup\.sh (\w+)", dockerfile)
    assert {"system", "python", "bake"} <= set(steps)
    for step in steps:
        assert re.search(rf"^\s+{step}\)", script, re.M), step
    assert re.search(r'^CMD \["python", "-u", "rp_handler.py"\]', dockerfile, re.M)
    assert re.search(r"^USER (?!root)", dockerfile, re.M)


@pytest.mark.parametrize("step", ["check", "bake"])
def test_docker_setup_steps_run_here(step, tmp_path):
    env = {**ENV, "PARAKEET_MODEL_CACHE": str(tmp_path / "extracted")}
    out = subprocess.run(
        ["bash", "docker/setup.sh", step], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    if step == "bake":  # the model is unpacked into the cache and loaded from there
        (folder,) = (tmp_path / "extracted").iterdir()
        assert (folder / "model_weights.ckpt").is_file()
        assert f"Restoration will occur within pre-extracted directory : `{folder}`" in out.stdout + out.stderr


def test_runpod_convention_files_match_the_schema():
    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())
    assert hub["type"] == "serverless" and hub["config"]["env"]
    tests = json.loads((ROOT / ".runpod" / "tests.json").read_text())["tests"]
    rp_handler.parse_request(tests[0]["input"])
    rp_handler.parse_request(json.loads((ROOT / "test_input.json").read_text())["input"])
    with pytest.raises(ASRError):
        decode_base64(tests[1]["input"]["audio_base64"], 1 << 20)


def test_sdk_local_test_run_with_test_input_json():
    """`python rp_handler.py` outside RunPod: the SDK runs test_input.json once and exits."""
    out = subprocess.run(
        [sys.executable, "rp_handler.py"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    m = re.search(r"Job result: \{'output': \{'text': '([^']*)'", log)
    assert m, log[-3000:]
    assert jiwer.wer("good morning teacher please open window today", m.group(1)) <= 0.15


def test_the_image_context_holds_the_worker_only():
    """.dockerignore keeps tests, benchmarks, docs and tools out of the image, and nothing the
    image's build needs."""
    rules = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"tests", "bench", "docs", "tools", ".git"} <= rules
    needed = [
        "requirements.txt",
        "docker",
        "parakeet_worker",
        "rp_handler.py",
        "asr_engine.py",
        "websocket_handler.py",
        "audio_utils.py",
        "client.py",
    ]
    assert not rules & set(needed)
