"""Strict settings: a typo'd or out-of-range variable stops the worker at start, before the model
loads, with one line naming the variable, its value and what is allowed."""

import os
import subprocess
import sys

import pytest

from parakeet_worker.config.settings import Settings, SettingsError
from tests.helpers import ROOT


@pytest.mark.parametrize(
    "env, allowed",
    [
        ({"WORKER_MODE": "loadbalancer"}, "queue, load_balancer"),
        ({"PRECISION": "bf61"}, "auto, bf16, fp16, fp32"),
        ({"MAX_BATCH_SIZE": "16.0"}, "whole number"),
        ({"MAX_BATCH_SIZE": "0"}, "from 1"),
        ({"MAX_BATCH_WAIT_MS": "soon"}, "a number"),
        ({"MEMORY_HIGH_WATER": "85"}, "to 1"),
        ({"STREAM_CHUNK_S": "nan"}, "finite"),
        ({"TORCH_COMPILE": "maybe"}, "1/true/yes/on"),
        ({"DEVICE": "gpu"}, "cpu, cuda"),
        ({"LOG_LEVEL": "verbose"}, "DEBUG"),
        ({"PORT": "70000"}, "65535"),
        ({"WS_IDLE_TIMEOUT_S": "-1"}, "from 0.1"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(env, allowed):
    with pytest.raises(SettingsError) as err:
        Settings.from_env(env)
    line = str(err.value)
    name, value = next(iter(env.items()))
    assert "\n" not in line and name in line and repr(value) in line and allowed in line


def test_good_values_in_any_case_pass():
    s = Settings.from_env(
        {
            "WORKER_MODE": "LOAD_BALANCER",
            "PRECISION": "Auto",
            "LOG_LEVEL": "debug",
            "DEVICE": "CUDA:1",
            "TORCH_COMPILE": "Off",
            "MAX_BATCH_SIZE": " 8 ",
        }
    )
    assert (s.worker_mode, s.precision, s.log_level, s.device, s.compile, s.max_batch_size) == (
        "load_balancer",
        "auto",
        "DEBUG",
        "cuda:1",
        False,
        8,
    )


@pytest.mark.parametrize("entry", ["rp_handler.py", "websocket_handler.py"])
def test_the_worker_stops_at_start_with_one_line(entry):
    env = {**os.environ, "WORKER_MODE": "loadbalancer", "PARAKEET_MODEL": "/nonexistent/never-loaded.nemo"}
    out = subprocess.run([sys.executable, entry], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == ["configuration error: WORKER_MODE='loadbalancer' is not valid: one of queue, load_balancer"]
