"""What the hardware allows: the device, the compute dtype, and how long a clip full attention fits.

Decided once at start-up, from the settings and what torch reports, and never silently degraded:
``DEVICE=cuda`` (the image's default) without a usable GPU stops the worker with the reason,
because a 0.6 B model quietly serving on CPU is an outage that looks like a slow endpoint.
"""

from __future__ import annotations

import logging
import math
import subprocess

import torch

from parakeet_worker.config.errors import DeviceLost

log = logging.getLogger(__name__)

# Full (rel-pos) attention keeps (heads x T x T) score matrices per layer, so its memory grows as
# T^2 (T = encoder frames, 80 ms each). K, bytes per frame^2 for parakeet-tdt-0.6b-v3 in bf16 at
# batch 1, is the setting FULL_ATTENTION_BYTES_PER_FRAME2 (default 250): NVIDIA's figure "24 min of
# audio with full attention on an 80 GB A100" gives at most 80e9 / 18000^2 = 247. Not yet measured
# here: bench/gpu_check.sh fits peak memory at 5, 10 and 20 min to a + K*T^2 on the GPU it runs on.
FULL_ATTENTION_HEADROOM = 0.8  # of the free memory: the allocator's fragmentation and the decoder's share
MAX_FULL_ATTENTION_S = 24 * 60.0  # NVIDIA's default threshold: the cap on any device, and the CPU's limit (not probed)


class DeviceUnavailable(RuntimeError):
    """The configured device cannot be used; the message says why and what to check."""


def cuda_diagnosis() -> str:
    """Why CUDA is not usable here, in one line: torch's CUDA build, the driver, the devices."""
    parts = [
        f"torch {torch.__version__}",
        f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build (no CUDA)",
    ]
    driver = nvidia_driver_version()
    parts.append(f"NVIDIA driver {driver}" if driver else "no NVIDIA driver visible (nvidia-smi absent or failing)")
    try:
        parts.append(f"{torch.cuda.device_count()} CUDA device(s) visible")
    except Exception as exc:  # noqa: BLE001 - a broken driver raises here; report it, do not mask it
        parts.append(f"device count failed: {exc}")
    hint = ""
    if torch.version.cuda and driver:
        hint = (
            f"; a driver too old for CUDA {torch.version.cuda} is the usual cause (CUDA 13 builds need"
            " driver >= 580, CUDA 12.8 builds >= 570): pick hosts with a matching CUDA version"
        )
    return ", ".join(parts) + hint


def nvidia_driver_version() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""


def resolve_device(requested: str = "") -> torch.device:
    """``cuda`` / ``cuda:N`` / ``cpu`` as configured; "" picks CUDA when present, else CPU.

    An explicit ``cuda`` that torch cannot use raises DeviceUnavailable with the diagnosis."""
    requested = (requested or "").strip().lower()
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"DEVICE={requested} but CUDA is not available: {cuda_diagnosis()}. "
            "Set DEVICE=cpu to serve on CPU on purpose."
        )
    return dev


def require_device(requested: str) -> torch.device:
    """For an entry point's first line: the device, or exit with the reason before anything loads."""
    try:
        return resolve_device(requested)
    except DeviceUnavailable as exc:
        log.critical("%s", exc)
        raise SystemExit(f"cannot start: {exc}") from None


def bf16_native(device: torch.device) -> bool:
    """bf16 in hardware (Ampere and newer). torch's plain is_bf16_supported() also counts emulated
    bf16, which a T4 runs many times slower than fp16."""
    if device.type != "cuda":
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without the argument: compute capability 8.0+ is native bf16
        return torch.cuda.get_device_capability(device)[0] >= 8


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The encoder's dtype. ``auto``: bf16 where the GPU has it natively, else fp16; fp32 on CPU.
    An explicit ``bf16`` is honoured on CPU too (the same casts and autocast as on a GPU, which is
    how the tests exercise the GPU's precision path), and falls back to fp16 on GPUs without it."""
    precision = (precision or "auto").lower()
    if precision == "fp32":
        return torch.float32
    if device.type != "cuda":
        return torch.bfloat16 if precision == "bf16" else torch.float32
    if precision == "fp16":
        return torch.float16
    if bf16_native(device):
        return torch.bfloat16
    if precision == "bf16":
        log.warning("PRECISION=bf16 but this GPU has no native bf16: using fp16")
    return torch.float16


def full_attention_limit_s(
    free_bytes: float, frame_s: float, bytes_per_frame2: float, headroom: float = FULL_ATTENTION_HEADROOM
) -> float:
    """Longest clip (seconds) whose full attention fits ``free_bytes``: T^2 * K <= headroom * free."""
    if free_bytes <= 0 or bytes_per_frame2 <= 0:
        return 0.0
    frames = math.sqrt(headroom * free_bytes / bytes_per_frame2)
    return frames * frame_s


def free_device_memory(device: torch.device) -> float | None:
    """Bytes the allocator can still get on this GPU (free plus what torch caches); None on CPU."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return float(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def memory_used_fraction(device: torch.device | None) -> float:
    """How full the memory that limits batch jobs is: the GPU's on a GPU (torch's cache counts as
    free: the allocator reuses it), else the machine's (psutil reports a cgroup limit as such)."""
    if device is not None and device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(device)
        return 1.0 - free_device_memory(device) / total
    import psutil

    return psutil.virtual_memory().percent / 100.0


# Messages of errors after which a CUDA context is unusable. An illegal memory access or a failed
# kernel launch is "sticky": every later call in the process fails the same way, so retrying is
# pointless and only an exit frees the GPU. Out-of-memory is not among them (it is recoverable).
_DEVICE_LOST_MARKERS = (
    "CUDA error",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "CUBLAS_STATUS_INTERNAL_ERROR",
    "CUDNN_STATUS_EXECUTION_FAILED",
    "CUDNN_STATUS_INTERNAL_ERROR",
)


def is_device_lost(exc: BaseException) -> bool:
    """Does ``exc`` mean the accelerator's context is gone (not a recoverable OOM)?
    ``torch.AcceleratorError`` (torch >= 2.8), or a RuntimeError whose message names a CUDA error."""
    if isinstance(exc, DeviceLost):
        return True
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        return False
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(exc, accel):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _DEVICE_LOST_MARKERS)


def describe(device: torch.device, dtype: torch.dtype) -> str:
    if device.type != "cuda":
        return f"cpu ({torch.get_num_threads()} threads), {str(dtype).replace('torch.', '')}"
    cap = torch.cuda.get_device_capability(device)
    return (
        f"{torch.cuda.get_device_name(device)} (sm_{cap[0]}{cap[1]}), CUDA {torch.version.cuda}, "
        f"driver {nvidia_driver_version() or '?'}, {str(dtype).replace('torch.', '')}"
    )
