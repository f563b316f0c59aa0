"""Shared fixtures: the bundled tiny Parakeet model and speech synthesized on the fly."""

import random

import pytest

from tests.helpers import FORMATS, SAMPLE_TEXT, TINY_MODEL, encode, require_model, write_wav
from tools.test_model import synth


def pytest_configure(config):
    config.addinivalue_line("markers", "requires_model: needs the tiny test model (an error if it is missing)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("requires_model") is not None:
        require_model()  # fails the test, naming the path and how to build the model


@pytest.fixture(scope="session")
def tiny_model():
    """The committed test model, loaded through the product's own loading function."""
    from parakeet_worker.engine.model_loader import load_model

    require_model()
    return load_model(str(TINY_MODEL), device="cpu")


@pytest.fixture(scope="session")
def speech_files(tmp_path_factory):
    """{format: path} of one English sentence (SAMPLE_TEXT) in every supported format."""
    d = tmp_path_factory.mktemp("formats")
    utt = synth.synthesize(SAMPLE_TEXT, "en", "en-us", random.Random(0), augment=False)
    src = write_wav(d / "source.wav", utt.audio)
    return {fmt: encode(src, d / f"speech.{fmt}", args) for fmt, args in FORMATS.items()}


@pytest.fixture(scope="session")
def lb_worker(tmp_path_factory):
    """``WORKER_MODE=load_balancer`` (rp_handler.py) on a free loopback port with the tiny model:
    the page, the WebSocket and the OpenAI route on one port. Yields (http base URL, token); the
    token guards both the WebSocket and the HTTP API, and files over 2 MB are refused."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.helpers import LB_MAX_BYTES, ROOT, free_port

    require_model()
    port, token = free_port(), "lb-secret"
    env = {
        **os.environ,
        "WORKER_MODE": "load_balancer",
        "PORT": str(port),
        "WS_HOST": "127.0.0.1",
        "PARAKEET_MODEL": str(TINY_MODEL),
        "DEVICE": "cpu",
        "WS_AUTH_TOKEN": token,
        "MAX_AUDIO_BYTES": str(LB_MAX_BYTES),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WS_PORT", None)
    env.pop("API_TOKEN", None)
    log_path = tmp_path_factory.mktemp("lb") / "lb.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "rp_handler.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.time() + 180
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, "the load-balancer worker did not get ready"
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:  # not listening yet, or too busy loading the model to answer in time
                    pass
                time.sleep(0.3)
            yield f"http://127.0.0.1:{port}", token
        finally:
            proc.terminate()
            proc.wait(15)
