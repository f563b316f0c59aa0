"""Device, precision and image decisions that a GPU would exercise, checked on CPU: a missing GPU
fails loudly, the fp16 fallback looks at native bf16 only, the full-attention limit follows the
T^2 law, and the image's CUDA versions, user and device setting agree with each other."""

import json
import re
import subprocess
import sys

import pytest
import torch

from parakeet_worker.config.settings import Settings
from parakeet_worker.runtime import hardware
from tests.helpers import ROOT


def test_device_cuda_without_cuda_fails_loudly_with_versions(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "nvidia_driver_version", lambda: "535.104.05")
    with pytest.raises(hardware.DeviceUnavailable) as err:
        hardware.resolve_device("cuda")
    msg = str(err.value)
    assert f"torch {torch.__version__}" in msg and "535.104.05" in msg and "DEVICE=cpu" in msg
    assert hardware.resolve_device("") == torch.device("cpu")  # auto: CPU here, on purpose
    assert hardware.resolve_device("cpu") == torch.device("cpu")


def test_diagnosis_names_a_cuda_build_and_an_old_driver(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(hardware, "nvidia_driver_version", lambda: "550.54")
    msg = hardware.cuda_diagnosis()
    assert "built for CUDA 13.0" in msg and "driver 550.54" in msg and ">= 580" in msg


def test_bf16_means_native_bf16_and_falls_back_to_fp16(monkeypatch):
    calls = []

    def bf16_supported(including_emulation=True):
        calls.append(including_emulation)
        return including_emulation  # a T4: bf16 only emulated

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    gpu = torch.device("cuda")
    assert hardware.compute_dtype(gpu, "auto") == torch.float16
    assert hardware.compute_dtype(gpu, "bf16") == torch.float16
    assert calls and not any(calls)  # always asked with including_emulation=False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert hardware.compute_dtype(gpu, "auto") == torch.bfloat16
    assert hardware.compute_dtype(gpu, "fp16") == torch.float16
    assert hardware.compute_dtype(gpu, "fp32") == torch.float32


def test_cpu_takes_bf16_only_when_asked():
    cpu = torch.device("cpu")
    assert hardware.compute_dtype(cpu, "auto") == torch.float32
    assert hardware.compute_dtype(cpu, "bf16") == torch.bfloat16
    assert hardware.compute_dtype(cpu, "fp16") == torch.float32  # no fp16 path on CPU
    assert hardware.compute_dtype(cpu, "fp32") == torch.float32


def test_full_attention_limit_follows_the_square_law():
    frame, k = 0.08, Settings().full_attention_bytes_per_frame2
    a100 = hardware.full_attention_limit_s(80e9, frame, k, headroom=1.0)
    assert 23 * 60 <= a100 <= 24.1 * 60  # the constant reproduces NVIDIA's 24 min on 80 GB
    card24 = hardware.full_attention_limit_s(20e9, frame, k)
    assert card24 == pytest.approx(a100 * (0.8 * 20 / 80) ** 0.5)  # 4x less memory: half the length
    assert card24 < 12 * 60  # a 24 GB card cannot run NVIDIA's 24 min
    assert hardware.full_attention_limit_s(0, frame, k) == 0


# ---- the image
def _dockerfile():
    return (ROOT / "Dockerfile").read_text()


def test_image_cuda_versions_agree():
    text = _dockerfile()
    cuda = re.search(r"^ARG CUDA_VERSION=(\d+)\.(\d+)", text, re.M)
    assert cuda and re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-(base|runtime)-ubuntu", text, re.M)
    major, minor = int(cuda.group(1)), int(cuda.group(2))
    torch_pin = re.search(r'^ARG TORCH_SPEC="torch==([\d.]+)"', text, re.M).group(1)
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert f"torch=={torch_pin}" in install  # the image runs the torch the tests ran
    # torch 2.13.0 on PyPI is a CUDA 13 build (its Linux wheel needs nvidia-*-cu13): a CUDA 13 base,
    # unless the image takes torch from another index
    assert major == 13 or re.search(r'^ARG TORCH_INDEX="\S+"', text, re.M)
    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())
    allowed = hub["config"]["allowedCudaVersions"]
    assert allowed and all(int(v.split(".")[0]) == major and int(v.split(".")[1]) >= minor for v in allowed)
    assert re.search(r"^\s+DEVICE=cuda\b", text, re.M)  # the image never serves on CPU by accident


def test_image_user_does_not_collide_with_ubuntus_uid_1000():
    script = (ROOT / "docker" / "setup.sh").read_text()
    assert "--uid" not in script + _dockerfile() and "useradd" not in _dockerfile()
    assert re.search(r"id -u worker .*\|\| useradd ", script)
    assert re.search(r"^USER worker$", _dockerfile(), re.M)


def test_cuda_match_step_refuses_a_torch_without_the_images_cuda():
    image = "12.8.1" if (torch.version.cuda or "").startswith("13") else "13.0.0"
    out = subprocess.run(
        ["bash", "docker/setup.sh", "cuda-match"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "CUDA_VERSION": image, "PYTHON": sys.executable},
    )
    assert out.returncode != 0
    assert ("CPU-only build" if torch.version.cuda is None else "built for CUDA") in out.stderr


@pytest.mark.parametrize(
    ("entry", "mode"), [("rp_handler.py", "queue"), ("rp_handler.py", "load_balancer"), ("websocket_handler.py", "")]
)
def test_worker_with_device_cuda_and_no_gpu_refuses_to_start(entry, mode, tmp_path):
    """The image sets DEVICE=cuda: on a host where torch cannot use the GPU the worker must stop
    with the reason, not serve the 0.6 B model on CPU (queue and load-balancer mode alike)."""
    if torch.cuda.is_available():
        pytest.skip("a usable GPU is present")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DEVICE": "cuda",
        "PARAKEET_MODEL": "/nonexistent.nemo",
        "WORKER_MODE": mode or "queue",
        "WS_PORT": "0",
        "WS_HOST": "127.0.0.1",
    }
    out = subprocess.run([sys.executable, entry], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "DEVICE=cuda but CUDA is not available" in out.stderr and f"torch {torch.__version__}" in out.stderr
    assert "Traceback" not in out.stderr  # one clear line, not a crash
