"""The module layout's promises: a batch-only worker never loads the WebSocket stack, result
types need no torch, and every setting comes from settings.py with its default written once."""

import dataclasses
import json
import subprocess
import sys

from settings import ENV, Settings
from tests.helpers import ROOT


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_batch_worker_does_not_import_the_websocket_stack():
    loaded = _modules_after("import rp_handler")
    assert "rp_handler" in loaded and "asr_engine" in loaded
    assert not {"websockets", "websocket_handler", "websocket_job", "streaming", "http_server", "openai_api"} & loaded


def test_formatting_and_result_types_do_not_import_torch():
    loaded = _modules_after("import formatting, transcript, long_audio, job_schema, settings, errors, constants")
    assert "torch" not in loaded and "asr_engine" not in loaded


def test_every_setting_has_one_variable_and_its_default_from_the_dataclass():
    assert set(ENV) == {f.name for f in dataclasses.fields(Settings)}
    assert Settings.from_env({}) == Settings()
    names = [n for ns in ENV.values() for n in ns]
    assert len(names) == len(set(names))


def test_settings_parse_each_type():
    s = Settings.from_env({"MAX_BATCH_SIZE": "4", "MAX_BATCH_WAIT_MS": "2.5", "TORCH_COMPILE": "yes",
                           "CUDA_GRAPHS": "0", "ALLOWED_URL_HOSTS": "Example.com, a:81,", "PRECISION": "BF16",
                           "WORKER_MODE": "Load_Balancer", "PARAKEET_MODEL": "", "RUNPOD_GENERATOR_HANDLER": "1"})
    assert (s.max_batch_size, s.max_batch_wait_ms, s.compile, s.cuda_graphs) == (4, 2.5, True, False)
    assert s.allowed_url_hosts == ("example.com", "a:81") and s.precision == "bf16"
    assert s.worker_mode == "load_balancer" and s.generator_handler and s.model == Settings.model


def test_ws_port_falls_back_to_port_and_names_its_public_mapping():
    s = Settings.from_env({"PORT": "9000", "RUNPOD_TCP_PORT_9000": "40123", "RUNPOD_TCP_PORT_8765": "1"})
    assert (s.ws_port, s.runpod_public_ws_port) == (9000, 40123)
    s = Settings.from_env({"WS_PORT": "8765", "PORT": "9000", "RUNPOD_TCP_PORT_8765": "40124"})
    assert (s.ws_port, s.runpod_public_ws_port) == (8765, 40124)
