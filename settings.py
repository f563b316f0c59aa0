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
    model_cache_dir: str = ""  # models unpacked at image build time (model_loader.py); "" = none
    device: str = ""  # "" = cuda if available, else cpu
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    compile: bool = False
    cuda_graphs: bool = True
    warmup: bool = True
    max_batch_size: int = 16
    max_batch_wait_ms: float = 10.0
    max_padding_ratio: float = 1.3  # split a batch rather than pad it beyond this (CPU: padding is pure waste)
    local_attention_threshold_s: float = 24 * 60.0
    local_attention_context: int = 128
    local_attention_window_s: float = 900.0  # long audio runs in windows this long: memory stays flat
    # audio input
    max_audio_bytes: int = 1 << 30
    max_audio_seconds: float = 4 * 3600.0
    download_timeout_s: float = 120.0
    max_redirects: int = 5
    allow_private_urls: bool = False
    allowed_url_hosts: tuple[str, ...] = field(default_factory=tuple)  # "host" or "host:port", exempt from the address check
    # real-time streaming (WebSocket)
    ws_host: str = "0.0.0.0"
    ws_port: int = 8765
    port_health: int = 0  # load-balancing mode: GET /ping also on this port (0 = only on ws_port)
    ws_auth_token: str = ""  # "" = no auth
    ws_max_sessions: int = 64
    ws_idle_timeout_s: float = 60.0  # no message from the client for this long closes the session
    ws_max_message_bytes: int = 1 << 20
    stream_chunk_s: float = 0.48  # decoding step per stream (NeMo rounds it to 80 ms frames)
    stream_left_s: float = 1.6  # left context re-encoded each step
    stream_right_s: float = 0.48  # look-ahead: adds this much latency, buys accuracy
    stream_eou_ms: int = 800  # silence that ends an utterance (see streaming.StreamConfig)

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            model=os.environ.get("PARAKEET_MODEL") or cls.model,
            model_cache_dir=os.environ.get("PARAKEET_MODEL_CACHE", ""),
            device=os.environ.get("DEVICE", ""),
            precision=os.environ.get("PRECISION", "auto").lower(),
            compile=_env_bool("TORCH_COMPILE", False),
            cuda_graphs=_env_bool("CUDA_GRAPHS", True),
            warmup=_env_bool("WARMUP", True),
            max_batch_size=_env_int("MAX_BATCH_SIZE", 16),
            max_batch_wait_ms=_env_float("MAX_BATCH_WAIT_MS", 10.0),
            max_padding_ratio=_env_float("MAX_PADDING_RATIO", 1.3),
            local_attention_threshold_s=_env_float("LOCAL_ATTENTION_THRESHOLD_S", 24 * 60.0),
            local_attention_context=_env_int("LOCAL_ATTENTION_CONTEXT", 128),
            local_attention_window_s=_env_float("LOCAL_ATTENTION_WINDOW_S", 900.0),
            max_audio_bytes=_env_int("MAX_AUDIO_BYTES", 1 << 30),
            max_audio_seconds=_env_float("MAX_AUDIO_SECONDS", 4 * 3600.0),
            download_timeout_s=_env_float("DOWNLOAD_TIMEOUT_S", 120.0),
            max_redirects=_env_int("MAX_REDIRECTS", 5),
            allow_private_urls=_env_bool("ALLOW_PRIVATE_URLS", False),
            allowed_url_hosts=_env_list("ALLOWED_URL_HOSTS"),
            ws_host=os.environ.get("WS_HOST", "0.0.0.0"),
            ws_port=_env_int("WS_PORT", _env_int("PORT", 8765)),
            port_health=_env_int("PORT_HEALTH", 0),
            ws_auth_token=os.environ.get("WS_AUTH_TOKEN", ""),
            ws_max_sessions=_env_int("WS_MAX_SESSIONS", 64),
            ws_idle_timeout_s=_env_float("WS_IDLE_TIMEOUT_S", 60.0),
            ws_max_message_bytes=_env_int("WS_MAX_MESSAGE_BYTES", 1 << 20),
            stream_chunk_s=_env_float("STREAM_CHUNK_S", 0.48),
            stream_left_s=_env_float("STREAM_LEFT_S", 1.6),
            stream_right_s=_env_float("STREAM_RIGHT_S", 0.48),
            stream_eou_ms=_env_int("STREAM_EOU_MS", 800),
        )
