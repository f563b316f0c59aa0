"""All configuration, read from the environment in one place (README lists every variable).

Each setting's default is written once, as the dataclass field's default; ``ENV`` names the
variable that overrides it, and the field's type says how the value is parsed. No other module
reads ``os.environ`` (the client's command line reads its own API key and token).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    # model and engine
    model: str = "nvidia/parakeet-tdt-0.6b-v3"
    model_cache_dir: str = ""  # models unpacked at image build time (model_loader.py); "" = none
    device: str = ""  # "" = cuda if available, else cpu
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    compile: bool = False
    # CUDA-graph TDT decoding: off until a GPU run of the real worker passes with it on (the first
    # H200 run crashed at the first live step with graphs on and warm-up; docs/GPU.md)
    cuda_graphs: bool = False
    warmup: bool = True
    warmup_streams: int = -1  # streams in the warm-up streaming step; -1 = WS_MAX_SESSIONS on GPU, 0 (none) on CPU
    max_batch_size: int = 16
    max_batch_wait_ms: float = 10.0
    max_padding_ratio: float = 1.3  # split a batch rather than pad it beyond this (CPU: padding is pure waste)
    # full attention up to this many seconds of audio, local attention above; 0 = what the GPU's
    # free memory holds by the T^2 law (hardware.py; 24 min on CPU, and never more)
    local_attention_threshold_s: float = 0.0
    full_attention_bytes_per_frame2: float = 250.0  # K of that law (hardware.py says where 250 comes from)
    local_attention_context: int = 128
    local_attention_window_s: float = 900.0  # long audio runs in windows this long: memory stays flat
    # audio input
    max_audio_bytes: int = 1 << 30
    max_audio_seconds: float = 4 * 3600.0
    download_timeout_s: float = 120.0
    max_redirects: int = 5
    allow_private_urls: bool = False
    # "host" or "host:port", exempt from the address check
    allowed_url_hosts: tuple[str, ...] = field(default_factory=tuple)
    # decoded audio all concurrent decodes may hold together (bytes); 0 = decode_memory_fraction of
    # the memory limit (see decode_budget_bytes)
    decode_memory_bytes: int = 0
    decode_memory_fraction: float = 0.25
    # real-time streaming (WebSocket)
    listen_host: str = "0.0.0.0"
    listen_port: int = 8765  # LISTEN_PORT, else WS_PORT, else PORT (RunPod load-balancing endpoints set PORT)
    port_health: int = 0  # load-balancing mode: GET /ping also on this port (0 = only on listen_port)
    auth_token: str = (
        ""  # AUTH_TOKEN (or WS_AUTH_TOKEN): the streams' token, and the HTTP API's unless API_TOKEN; "" = none
    )
    api_token: str = ""  # the HTTP API's bearer token; "" = WS_AUTH_TOKEN's (see http_api_token)
    # without a token: the Host names the port answers to (loopback names and RunPod's own names
    # for this pod or endpoint are always allowed) and browser origins besides the page's own
    allowed_hosts: tuple[str, ...] = field(default_factory=tuple)
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    page_connect_src: tuple[str, ...] = field(default_factory=tuple)  # other WebSocket URLs the page may use
    ws_max_sessions: int = 64
    # the HTTP port's connections (http_server.py): a request head must be complete this long
    # after connecting, an idle keep-alive connection is closed after this long, and beyond
    # max_connections a new connection gets 503 at once (0: half the descriptor limit)
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 30.0
    max_connections: int = 0
    # uploads to POST /v1/audio/transcriptions (serving/openai/): no data for upload_stall_s, or
    # not done in upload_timeout_s, is a 408; at most max_uploads at once (429), and all of them
    # together hold at most spool_budget_bytes on disk (503; 0: 4 x MAX_AUDIO_BYTES)
    upload_stall_s: float = 30.0
    upload_timeout_s: float = 900.0
    upload_min_rate: float = 4096.0  # bytes/s an upload must average once past upload_stall_s (0: none)
    max_uploads: int = 32
    spool_budget_bytes: int = 0
    ws_idle_timeout_s: float = 60.0  # no valid message from the client for this long closes the session
    ws_start_timeout_s: float = 15.0  # a session that has not started a stream by then is closed
    ws_max_message_bytes: int = 1 << 20
    stream_step_s: float = 0.48  # STREAM_CHUNK_S: audio decoded per streaming step (NeMo rounds to 80 ms frames)
    stream_left_s: float = 1.6  # left context re-encoded each step
    stream_right_s: float = 0.48  # look-ahead: adds this much latency, buys accuracy
    stream_eou_ms: int = 800  # silence that ends an utterance (see streaming.StreamConfig)
    # fairness, overload and shutdown (scheduling.py, lifecycle.py)
    live_batch_pass_s: float = 0.5  # while streams are live, one batch forward pass aims at this much compute
    live_min_window_s: float = 10.0  # ... but never cuts audio into windows shorter than this
    drain_timeout_s: float = 30.0  # SIGTERM/SIGINT: the longest drain before the process exits anyway
    memory_high_water: float = 0.85  # fraction of RAM (or GPU memory) above which fewer batch jobs are taken
    # process
    log_level: str = "INFO"
    worker_mode: str = "queue"  # queue (RunPod jobs) | load_balancer (only the WebSocket server)
    generator_handler: bool = False  # RunPod: the generator handler form (see rp_handler.py)
    # set by RunPod in a worker (read-only facts about where we run)
    runpod_public_ip: str = ""  # the pod's public address, for the websocket job's ws_url
    runpod_pod_id: str = ""  # its proxy name is <pod id>-<port>.proxy.runpod.net
    runpod_endpoint_id: str = ""  # a load-balancing endpoint answers at <endpoint id>.api.runpod.ai
    runpod_public_ws_port: int = 0  # RUNPOD_TCP_PORT_<listen_port>: the public port mapped to listen_port
    runpod_progress_url: str = ""  # RUNPOD_WEBHOOK_POST_OUTPUT: progress updates are posted there
    runpod_stream_url: str = ""  # RUNPOD_WEBHOOK_POST_STREAM: the job's /stream channel

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values = {}
        for f in dataclasses.fields(cls):
            names = ENV[f.name]
            if f.name == "runpod_public_ws_port":
                names = (f"RUNPOD_TCP_PORT_{values.get('listen_port', cls.listen_port)}",)
            name = next((n for n in names if env.get(n, "").strip()), None)
            if name is not None:
                values[f.name] = _parse(f, env[name].strip(), name)
        return cls(**values)

    @classmethod
    def from_env_or_exit(cls) -> Settings:
        """``from_env`` for entry points: a bad variable stops the process at start, before the
        model loads, with one line on stderr (exit status 2)."""
        try:
            return cls.from_env()
        except SettingsError as exc:
            print(f"configuration error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)

    @property
    def http_api_token(self) -> str:
        """What ``POST /v1/audio/transcriptions`` requires: API_TOKEN, else WS_AUTH_TOKEN, else nothing."""
        return self.api_token or self.auth_token

    def host_allowed(self, host: str) -> bool:
        """Is ``host`` (a Host header's name, port removed, lowercase) one this worker answers to
        without a token? Loopback names, ALLOWED_HOSTS, and RunPod's names for this pod/endpoint."""
        import ipaddress

        if host == "localhost" or host.endswith(".localhost") or host in self.allowed_hosts:
            return True
        if host and host in (self.runpod_public_ip,):
            return True
        if (
            self.runpod_pod_id
            and host.startswith(f"{self.runpod_pod_id.lower()}-")
            and host.endswith(".proxy.runpod.net")
        ):
            return True
        if self.runpod_endpoint_id and host == f"{self.runpod_endpoint_id.lower()}.api.runpod.ai":
            return True
        try:
            return ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            return False

    @property
    def spool_budget(self) -> int:
        """Bytes all uploads in flight may spool to disk together."""
        return self.spool_budget_bytes if self.spool_budget_bytes > 0 else 4 * self.max_audio_bytes

    @property
    def connection_cap(self) -> int:
        """MAX_CONNECTIONS, else half the process's descriptor limit: the other half stays for
        model files, temp files, ffmpeg pipes and the health check."""
        if self.max_connections > 0:
            return self.max_connections
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return max(64, min(4096, (soft if soft > 0 else 1024) // 2))

    @property
    def stream_token(self) -> str:
        """What a WebSocket session requires: WS_AUTH_TOKEN, else API_TOKEN (a token set for the
        HTTP API alone must not leave the WebSocket open), else nothing."""
        return self.auth_token or self.api_token

    @property
    def model_id(self) -> str:
        """The served model's public name: a Hugging Face id as it is, a local file or folder by its
        name alone. Responses carry this, never a path of the machine."""
        name = self.model.rstrip("/\\")
        if name.endswith(".nemo") or name.startswith((".", "/", "~")) or os.path.exists(name):
            base = os.path.basename(name)
            return base[: -len(".nemo")] if base.endswith(".nemo") else base
        return name

    @property
    def decode_budget_bytes(self) -> int:
        """The decode memory budget: DECODE_MEMORY_BYTES, else a share of the memory this process
        may use (the container's cgroup limit when there is one, else physical RAM)."""
        if self.decode_memory_bytes > 0:
            return self.decode_memory_bytes
        return max(256 << 20, int(_memory_limit() * self.decode_memory_fraction))


def _memory_limit() -> int:
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit():
            return min(physical, int(raw))
    return physical


# field -> the environment variables that set it, first one set wins. The later names are the ones
# older releases used, still accepted: WS_HOST/WS_PORT (they set the whole server's address, not
# only the WebSocket's), WS_AUTH_TOKEN, STREAM_CHUNK_S (the decoder's step, not a job's chunk).
ENV: dict[str, tuple[str, ...]] = {
    "model": ("PARAKEET_MODEL",),
    "model_cache_dir": ("PARAKEET_MODEL_CACHE",),
    "device": ("DEVICE",),
    "precision": ("PRECISION",),
    "compile": ("TORCH_COMPILE",),
    "cuda_graphs": ("CUDA_GRAPHS",),
    "warmup": ("WARMUP",),
    "warmup_streams": ("WARMUP_STREAMS",),
    "max_batch_size": ("MAX_BATCH_SIZE",),
    "max_batch_wait_ms": ("MAX_BATCH_WAIT_MS",),
    "max_padding_ratio": ("MAX_PADDING_RATIO",),
    "local_attention_threshold_s": ("LOCAL_ATTENTION_THRESHOLD_S",),
    "full_attention_bytes_per_frame2": ("FULL_ATTENTION_BYTES_PER_FRAME2",),
    "local_attention_context": ("LOCAL_ATTENTION_CONTEXT",),
    "local_attention_window_s": ("LOCAL_ATTENTION_WINDOW_S",),
    "max_audio_bytes": ("MAX_AUDIO_BYTES",),
    "max_audio_seconds": ("MAX_AUDIO_SECONDS",),
    "download_timeout_s": ("DOWNLOAD_TIMEOUT_S",),
    "max_redirects": ("MAX_REDIRECTS",),
    "allow_private_urls": ("ALLOW_PRIVATE_URLS",),
    "allowed_url_hosts": ("ALLOWED_URL_HOSTS",),
    "decode_memory_bytes": ("DECODE_MEMORY_BYTES",),
    "decode_memory_fraction": ("DECODE_MEMORY_FRACTION",),
    "listen_host": ("LISTEN_HOST", "WS_HOST"),
    "listen_port": ("LISTEN_PORT", "WS_PORT", "PORT"),
    "port_health": ("PORT_HEALTH",),
    "auth_token": ("AUTH_TOKEN", "WS_AUTH_TOKEN"),
    "api_token": ("API_TOKEN",),
    "ws_max_sessions": ("WS_MAX_SESSIONS",),
    "ws_idle_timeout_s": ("WS_IDLE_TIMEOUT_S",),
    "ws_start_timeout_s": ("WS_START_TIMEOUT_S",),
    "ws_max_message_bytes": ("WS_MAX_MESSAGE_BYTES",),
    "stream_step_s": ("STREAM_STEP_S", "STREAM_CHUNK_S"),
    "stream_left_s": ("STREAM_LEFT_S",),
    "stream_right_s": ("STREAM_RIGHT_S",),
    "stream_eou_ms": ("STREAM_EOU_MS",),
    "live_batch_pass_s": ("LIVE_BATCH_PASS_S",),
    "live_min_window_s": ("LIVE_MIN_WINDOW_S",),
    "drain_timeout_s": ("DRAIN_TIMEOUT_S",),
    "memory_high_water": ("MEMORY_HIGH_WATER",),
    "log_level": ("LOG_LEVEL",),
    "worker_mode": ("WORKER_MODE",),
    "generator_handler": ("RUNPOD_GENERATOR_HANDLER",),
    "runpod_public_ip": ("RUNPOD_PUBLIC_IP",),
    "runpod_pod_id": ("RUNPOD_POD_ID",),
    "runpod_endpoint_id": ("RUNPOD_ENDPOINT_ID",),
    "header_timeout_s": ("HEADER_TIMEOUT_S",),
    "upload_stall_s": ("UPLOAD_STALL_S",),
    "upload_timeout_s": ("UPLOAD_TIMEOUT_S",),
    "upload_min_rate": ("UPLOAD_MIN_RATE",),
    "max_uploads": ("MAX_CONCURRENT_UPLOADS",),
    "spool_budget_bytes": ("SPOOL_BUDGET_BYTES",),
    "keepalive_timeout_s": ("KEEPALIVE_TIMEOUT_S",),
    "max_connections": ("MAX_CONNECTIONS",),
    "allowed_hosts": ("ALLOWED_HOSTS",),
    "allowed_origins": ("ALLOWED_ORIGINS",),
    "page_connect_src": ("PAGE_CONNECT_SRC",),
    "runpod_public_ws_port": (),  # named after listen_port: see from_env
    "runpod_progress_url": ("RUNPOD_WEBHOOK_POST_OUTPUT",),
    "runpod_stream_url": ("RUNPOD_WEBHOOK_POST_STREAM",),
}
# Allowed values of the enumerated settings (compared lowercase; log_level is kept uppercase).
CHOICES: dict[str, tuple[str, ...]] = {
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "worker_mode": ("queue", "load_balancer"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
}
# (lowest, highest) allowed; None: no bound on that side. Numbers not listed must be >= 0.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "warmup_streams": (-1, 4096),
    "max_batch_size": (1, 1024),
    "max_batch_wait_ms": (0, 10_000),
    "max_padding_ratio": (1.0, None),
    "full_attention_bytes_per_frame2": (1.0, None),
    "local_attention_context": (1, 4096),
    "local_attention_window_s": (10.0, None),
    "max_audio_bytes": (1, None),
    "max_audio_seconds": (1.0, None),
    "download_timeout_s": (0.1, None),
    "max_redirects": (0, 20),
    "decode_memory_fraction": (0.01, 1.0),
    "listen_port": (0, 65535),
    "port_health": (0, 65535),
    "runpod_public_ws_port": (0, 65535),
    "ws_max_sessions": (1, 100_000),
    "header_timeout_s": (0.1, None),
    "keepalive_timeout_s": (0.1, None),
    "upload_stall_s": (0.1, None),
    "upload_timeout_s": (0.1, None),
    "max_uploads": (1, None),
    "ws_idle_timeout_s": (0.1, None),
    "ws_start_timeout_s": (0.1, None),
    "ws_max_message_bytes": (1024, None),
    "stream_step_s": (0.08, 10.0),
    "stream_left_s": (0.0, 60.0),
    "stream_right_s": (0.0, 10.0),
    "stream_eou_ms": (0, 60_000),
    "live_batch_pass_s": (0.01, None),
    "live_min_window_s": (1.0, None),
    "drain_timeout_s": (0.0, 3600.0),
    "memory_high_water": (0.05, 1.0),
}
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


class SettingsError(ValueError):
    """An environment variable the worker cannot run with: one line naming it, its value and what
    is allowed. Raised by ``Settings.from_env`` before anything is loaded."""


def _parse(f: dataclasses.Field, raw: str, name: str):
    kind = f.type  # a string: `from __future__ import annotations`

    def bad(allowed: str) -> SettingsError:
        return SettingsError(f"{name}={raw[:80]!r} is not valid: {allowed}")

    if kind == "bool":
        if raw.lower() not in _BOOLS:
            raise bad("use 1/true/yes/on or 0/false/no/off")
        return _BOOLS[raw.lower()]
    if kind in ("int", "float"):
        try:
            value = int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise bad("a whole number is required" if kind == "int" else "a number is required") from None
        if kind == "float" and not math.isfinite(value):
            raise bad("a finite number is required")
        lo, hi = RANGES.get(f.name, (0, None))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"from {lo:g}" + (f" to {hi:g}" if hi is not None else " up") if lo is not None else f"up to {hi:g}"
            raise bad(f"allowed {span}")
        return value
    if kind.startswith("tuple"):
        return tuple(x.strip().lower() for x in raw.split(",") if x.strip())
    if f.name in CHOICES:
        value = raw.upper() if f.name == "log_level" else raw.lower()
        if value not in CHOICES[f.name]:
            raise bad("one of " + ", ".join(CHOICES[f.name]))
        return value
    if f.name == "device" and not re.fullmatch(r"cpu|cuda(:\d+)?", raw.lower()):
        raise bad("cpu, cuda or cuda:N (unset: cuda when present)")
    return raw.lower() if f.name == "device" else raw
