"""All configuration, read from the environment in one place (README lists every variable)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(x.strip().lower() for x in os.environ.get(name, "").split(",") if x.strip())


@dataclass(frozen=True)
class Settings:
    # model and engine
    model: str = "nvidia/parakeet-tdt-0.6b-v3"
    device: str = ""  # "" = cuda if available, else cpu
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    compile: bool = False
    cuda_graphs: bool = True
    warmup: bool = True
    max_batch_size: int = 16
    max_batch_wait_ms: float = 10.0
    local_attention_threshold_s: float = 24 * 60.0
    local_attention_context: int = 128
    # audio input
    max_audio_bytes: int = 1 << 30
    max_audio_seconds: float = 4 * 3600.0
    download_timeout_s: float = 120.0
    max_redirects: int = 5
    allow_private_urls: bool = False
    allowed_url_hosts: tuple[str, ...] = field(default_factory=tuple)  # "host" or "host:port", exempt from the address check

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            model=os.environ.get("PARAKEET_MODEL") or cls.model,
            device=os.environ.get("DEVICE", ""),
            precision=os.environ.get("PRECISION", "auto").lower(),
            compile=_env_bool("TORCH_COMPILE", False),
            cuda_graphs=_env_bool("CUDA_GRAPHS", True),
            warmup=_env_bool("WARMUP", True),
            max_batch_size=_env_int("MAX_BATCH_SIZE", 16),
            max_batch_wait_ms=_env_float("MAX_BATCH_WAIT_MS", 10.0),
            local_attention_threshold_s=_env_float("LOCAL_ATTENTION_THRESHOLD_S", 24 * 60.0),
            local_attention_context=_env_int("LOCAL_ATTENTION_CONTEXT", 128),
            max_audio_bytes=_env_int("MAX_AUDIO_BYTES", 1 << 30),
            max_audio_seconds=_env_float("MAX_AUDIO_SECONDS", 4 * 3600.0),
            download_timeout_s=_env_float("DOWNLOAD_TIMEOUT_S", 120.0),
            max_redirects=_env_int("MAX_REDIRECTS", 5),
            allow_private_urls=_env_bool("ALLOW_PRIVATE_URLS", False),
            allowed_url_hosts=_env_list("ALLOWED_URL_HOSTS"),
        )
