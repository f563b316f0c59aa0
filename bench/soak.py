"""Soak: a real worker process under mixed, hostile and abrupt traffic for a given time, then SIGTERM.

    python bench/soak.py --minutes 30 --out logs/soak          # tiny model, loopback only
    python bench/soak.py --seconds 20 --out /tmp/soak-smoke           # the CI smoke (tests/test_soak_smoke.py)

The worker is ``rp_handler.py --rp_serve_api`` (the RunPod SDK's local job API) on loopback, with a
``websocket`` job holding its real-time server open, so batch jobs and live streams share one
engine as in production. Our own asyncio driver (bounded in time and in requests) runs:
- batch clients: valid jobs of every format (WAV, FLAC, MP3, OGG, Opus, WebM, M4A), as base64 and
  as ``audio_url`` from a loopback file server, every output format, now and then a chunked one;
  each must COMPLETE with a transcript close to its reference;
- a hostile client: garbage and non-audio files, bad fields, forbidden URLs (refused by
  the URL policy before any connection), a loopback download that drops mid-body and one that
  trickles bytes past the download timeout; each must FAIL with its expected code;
- stream clients: live sessions paced in real time that finish normally (their ``done`` text
  checked), pause for a while mid-utterance, or disconnect abruptly mid-utterance;
- a sampler: the worker's RSS, open fds, threads and temp files, and a ``/metrics`` scrape, every
  ``--sample-s`` seconds.
At the end, with streams mid-utterance and batch jobs in flight, the worker gets SIGTERM: every
stream must get its final, ``done`` and a 1001/1012 close, every in-flight job must complete, the
websocket job must end with ``reason: "shutdown"``, and the process must exit 0.

Writes ``summary.json``, ``samples.json``, ``events.json`` and plots (``resources.png``,
``latency.png``) to ``--out``; exits non-zero if any valid job or check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded by file path (tests)
from _paths import ROOT, shown  # noqa: E402  puts the repository on sys.path

OUTPUT_FORMATS = ["json", "text", "srt", "vtt"]
VALID_MAX_WER = 0.35  # the tiny model on clean espeak-ng speech (tests use 0.15-0.2 on one sentence)
STREAM_MAX_WER = 0.4
TOKEN = "soak-token"
SR = 16000


def http_session():
    """The driver's HTTP client: a fresh connection per request. The RunPod SDK's local API is
    uvicorn, which closes a keep-alive connection idle for 5 s (its default ``timeout_keep_alive``);
    a pooled connection reused just then (``--hostile-every 5``, or a client loop too busy to see
    the server's FIN) carries the request onto a closed socket: ``ClientOSError(104, 'Connection
    reset by peer')`` or ``ServerDisconnectedError``, a failure of the client, not of the worker
    (tests/test_soak_findings.py)."""
    import aiohttp

    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHECK_TEXT = True  # --no-text-check: a model with random weights (bench only) says nothing sensible


def wer(ref: str, hyp: str) -> float:
    import jiwer

    if not CHECK_TEXT:
        return 0.0
    return jiwer.wer(ref.lower(), hyp.lower() or "-")


# ---------------------------------------------------------------------------------------------
# material
@dataclass
class Material:
    files: dict[str, tuple[Path, str]]  # name -> (file, reference text)
    long_file: tuple[Path, str]
    streams: list[tuple[np.ndarray, str, float]]  # (audio, reference, seconds where speech ends)
    hostile: dict[str, tuple[dict, str]] = field(default_factory=dict)


def make_material(d: Path, file_port: int, seed: int = 14, sentences: int = 3) -> Material:
    import soundfile as sf

    from tools.test_model import synth

    rng = random.Random(seed)
    words = synth.load_words("en")
    files = {}
    for k in range(sentences):
        text = synth.random_sentence(rng, words, 5, 9)
        u = synth.synthesize(text, "en", "en-us", rng, augment=False)
        src = d / f"src{k}.wav"
        sf.write(src, u.audio, SR, subtype="PCM_16")
        for fmt, args in synth.FORMATS.items():
            dst = d / f"s{k}.{fmt}"
            subprocess.run(
                ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)], check=True
            )
            files[f"s{k}.{fmt}"] = (dst, u.text)
    parts, texts = [], []
    for _ in range(6):  # ~25-35 s of speech with pauses: a chunked job
        u = synth.synthesize(synth.random_sentence(rng, words, 5, 9), "en", "en-us", rng, augment=False)
        parts += [u.audio, np.zeros(int(0.7 * SR), np.float32)]
        texts.append(u.text)
    long_wav = d / "long.wav"
    sf.write(long_wav, np.concatenate(parts), SR, subtype="PCM_16")
    streams = []
    for _ in range(4):
        a = synth.synthesize(synth.random_sentence(rng, words, 4, 8), "en", "en-us", rng, augment=False)
        b = synth.synthesize(synth.random_sentence(rng, words, 4, 8), "en", "en-gb", rng, augment=False)
        gap, tail = np.zeros(int(1.5 * SR), np.float32), np.zeros(int(0.3 * SR), np.float32)
        audio = np.concatenate([a.audio, gap, b.audio, tail])
        streams.append((audio, f"{a.text} {b.text}", len(audio) / SR))
    wav_b64 = base64.b64encode(files["s0.wav"][0].read_bytes()).decode()
    garbage = b"\x01" + random.Random(6).randbytes(30000).replace(b"\xff", b"\x01")
    hostile = {
        "garbage": ({"audio_base64": base64.b64encode(garbage).decode()}, "unsupported_format"),  # no container
        "png": ({"audio_base64": base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()}, "unsupported_format"),
        "bad_base64": ({"audio_base64": "%%% not base64 %%%"}, "invalid_input"),
        "unknown_field": ({"audio_base64": wav_b64, "language": "en"}, "invalid_input"),
        "both_sources": (
            {"audio_base64": wav_b64, "audio_url": f"http://127.0.0.1:{file_port}/s0.wav"},
            "invalid_input",
        ),
        "url_metadata": ({"audio_url": "http://169.254.169.254/latest/meta-data"}, "forbidden_url"),
        "url_loopback_other_port": ({"audio_url": "http://127.0.0.1:9/a.wav"}, "forbidden_url"),
        "url_file": ({"audio_url": "file:///etc/passwd"}, "forbidden_url"),
        "download_drops": ({"audio_url": f"http://127.0.0.1:{file_port}/drop"}, "download_failed"),
        "download_trickles": ({"audio_url": f"http://127.0.0.1:{file_port}/trickle"}, "download_failed"),
        "download_404": ({"audio_url": f"http://127.0.0.1:{file_port}/missing.wav"}, "download_failed"),
    }
    return Material(files, (long_wav, " ".join(texts)), streams, hostile)


class FileServer:
    """Loopback file server: /<name> serves a file; /drop promises a body and hangs up midway;
    /trickle sends a byte every 0.5 s (past the worker's download timeout)."""

    def __init__(self, root: Path):
        root_dir = root

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                name = self.path.lstrip("/")
                if name == "drop":
                    data = (root_dir / "src0.wav").read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if name == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    try:
                        for _ in range(60):
                            self.wfile.write(b"R")
                            self.wfile.flush()
                            time.sleep(0.5)
                    except OSError:
                        pass  # the worker gave up: that is the point
                    return
                path = root_dir / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()


# ---------------------------------------------------------------------------------------------
# the driver
class Soak:
    def __init__(self, args, out: Path):
        self.args, self.out = args, out
        self.t0 = 0.0
        self.deadline = 0.0
        self.requests = 0
        self.events: list[dict] = []  # one per request: t, kind, ok, latency, detail
        self.samples: list[dict] = []
        self.failures: list[dict] = []  # checks that failed (valid jobs, streams, drain)
        self.rng = random.Random(args.seed)

    # ---- bookkeeping
    def record(self, kind: str, ok: bool, latency: float | None, **detail) -> None:
        ev = {
            "t": round(time.monotonic() - self.t0, 2),
            "kind": kind,
            "ok": ok,
            "latency": None if latency is None else round(latency, 3),
            **detail,
        }
        self.events.append(ev)
        if not ok:
            self.failures.append(ev)
            print("FAIL", json.dumps(ev)[:400], flush=True)

    def more(self) -> bool:
        return time.monotonic() < self.deadline and self.requests < self.args.max_requests

    # ---- worker process
    def start_worker(self, file_port: int) -> None:
        self.api_port, self.listen_port = free_port(), free_port()
        self.tmp = self.out / "worker-tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PARAKEET_MODEL": self.args.model,
            "DEVICE": "cpu",
            "WS_HOST": "127.0.0.1",
            "WS_PORT": str(self.listen_port),
            "WS_AUTH_TOKEN": TOKEN,
            "PYTHONUNBUFFERED": "1",
            "ALLOWED_URL_HOSTS": f"127.0.0.1:{file_port}",
            "DOWNLOAD_TIMEOUT_S": "4",
            "MAX_BATCH_WAIT_MS": "20",
            "DRAIN_TIMEOUT_S": str(self.args.drain_timeout),
            "TMPDIR": str(self.tmp),
            "UVICORN_LOG_LEVEL": "warning",
        }
        self.log = open(self.out / "worker.log", "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "rp_handler.py",
                "--rp_serve_api",
                "--rp_api_host",
                "127.0.0.1",
                "--rp_api_port",
                str(self.api_port),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.api_port}"
        wait_port(self.api_port, self.proc, 600)

    async def start_websocket_job(self, http) -> asyncio.Task:
        lifetime = max(60.0, self.args.seconds + 600.0)
        async with http.post(
            f"{self.url}/run", json={"input": {"action": "websocket", "idle_timeout": 3600, "max_lifetime": lifetime}}
        ) as r:
            job = await r.json()

        import aiohttp

        NO_TIMEOUT = aiohttp.ClientTimeout(total=None)

        async def status():  # the SDK's local server runs a /run job while its status is asked for
            async with http.post(f"{self.url}/status/{job['id']}", timeout=NO_TIMEOUT) as r:
                return await r.json()

        task = asyncio.create_task(status())
        await asyncio.to_thread(wait_port, self.listen_port, self.proc, 300)
        self.ws_url = f"ws://127.0.0.1:{self.listen_port}"
        return task

    # ---- load
    async def runsync(self, http, job_input: dict) -> tuple[dict, float]:
        import aiohttp

        NO_TIMEOUT = aiohttp.ClientTimeout(total=None)
        t = time.monotonic()
        async with http.post(f"{self.url}/runsync", json={"input": job_input}, timeout=NO_TIMEOUT) as r:
            res = await r.json()
        return res, time.monotonic() - t

    def valid_job(self, i: int, file_port: int, mat: Material) -> tuple[dict, str, str]:
        names = sorted(mat.files)
        name = names[i % len(names)]
        path, ref = mat.files[name]
        fmt = OUTPUT_FORMATS[(i // len(names)) % len(OUTPUT_FORMATS)]
        if i % 11 == 5:  # a chunked job now and then
            path, ref = mat.long_file
            name = "long.wav"
            job = {"chunk_long_audio": True, "chunk_duration": 10.0}
        else:
            job = {"output_format": fmt}
        if i % 3 == 1:
            job["audio_url"] = f"http://127.0.0.1:{file_port}/{path.name}"
        else:
            job["audio_base64"] = base64.b64encode(path.read_bytes()).decode()
        return job, ref, name

    async def batch_client(self, http, k: int, file_port: int, mat: Material) -> None:
        i = k
        while self.more():
            self.requests += 1
            job, ref, name = self.valid_job(i, file_port, mat)
            i += self.args.batch_clients
            try:
                res, took = await self.runsync(http, job)
            except Exception as exc:  # noqa: BLE001 - a transport failure is a failed job
                self.record("batch", False, None, file=name, error=repr(exc))
                continue
            out = res.get("output")
            if res.get("status") != "COMPLETED" or not isinstance(out, (dict, str)):
                self.record("batch", False, took, file=name, error=str(res.get("error") or res)[:200])
                continue
            text = out if isinstance(out, str) else out.get("text", "")
            if job.get("output_format") in ("srt", "vtt"):
                text = out.get("text", "") if isinstance(out, dict) else ""
            w = wer(ref, text)
            self.record("batch", w <= VALID_MAX_WER, took, file=name, wer=round(w, 3))

    async def hostile_client(self, http, mat: Material) -> None:
        names = sorted(mat.hostile)
        i = 0
        while self.more():
            self.requests += 1
            name = names[i % len(names)]
            i += 1
            job, code = mat.hostile[name]
            try:
                res, took = await self.runsync(http, job)
            except Exception as exc:  # noqa: BLE001
                self.record("hostile", False, None, case=name, error=repr(exc))
                continue
            got = str(res.get("error", "")).split(":", 1)[0]
            self.record("hostile", res.get("status") == "FAILED" and got == code, took, case=name, code=got)
            await asyncio.sleep(self.args.hostile_every)

    async def stream_client(self, k: int, mat: Material) -> None:
        i = k
        while self.more():
            self.requests += 1
            audio, ref, _ = mat.streams[i % len(mat.streams)]
            mode = ("complete", "complete", "pause", "abrupt")[self.rng.randrange(4)]
            i += 1
            try:
                res = await stream_session(self.ws_url, audio, mode)
            except Exception as exc:  # noqa: BLE001
                self.record("stream", False, None, mode=mode, error=repr(exc)[:200])
                continue
            if mode == "abrupt":
                self.record("stream", True, None, mode=mode)
                continue
            w = wer(ref, res["text"])
            self.record(
                "stream",
                w <= STREAM_MAX_WER,
                res["stop_to_done"],
                mode=mode,
                wer=round(w, 3),
                max_gap=res["max_gap"],
                final_lag=res["final_lag"],
            )

    async def sampler(self, http) -> None:
        while time.monotonic() < self.deadline + 1 and self.proc.poll() is None:
            self.samples.append(await self.sample(http))
            await asyncio.sleep(self.args.sample_s)

    async def sample(self, http) -> dict:
        import aiohttp
        import psutil

        s = {"t": round(time.monotonic() - self.t0, 1)}
        try:
            p = psutil.Process(self.proc.pid)
            s.update(
                rss_mb=round(p.memory_info().rss / 2**20, 1),
                fds=p.num_fds(),
                threads=p.num_threads(),
                children=len(p.children(recursive=True)),
                cpu_s=round(sum(p.cpu_times()[:2]), 1),
            )
        except psutil.Error:
            pass
        s["temp_files"] = sum(1 for _ in self.tmp.rglob("*"))
        try:
            url = f"http://127.0.0.1:{self.listen_port}/metrics"
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
                text = await r.text()
            s.update(parse_metrics(text))
        except Exception as exc:  # noqa: BLE001
            s["metrics_error"] = repr(exc)[:100]
        return s

    # ---- the end: SIGTERM with work in flight
    async def drain_phase(self, http, mat: Material, ws_job: asyncio.Task) -> dict:
        audio, ref, _ = mat.streams[0]
        cut = len(audio) // 2  # mid-utterance (inside the second sentence) when the signal comes
        streams = [asyncio.create_task(stream_until_closed(self.ws_url, audio[:cut])) for _ in range(2)]
        jobs = [
            asyncio.create_task(self.runsync(http, self.valid_job(i, 0, mat)[0] | {})) for i in (0, 2)
        ]  # base64 jobs (i % 3 != 1)
        await asyncio.sleep(cut / SR + 0.5)  # every stream has sent its audio, no stop
        t_sig = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        res = {"stream_results": [], "job_results": []}
        for st in streams:
            try:
                r = await asyncio.wait_for(st, self.args.drain_timeout + 10)
            except Exception as exc:  # noqa: BLE001
                r = {"error": repr(exc)[:200]}
            res["stream_results"].append(r)
        for jt in jobs:
            try:
                out, took = await asyncio.wait_for(jt, self.args.drain_timeout + 10)
                res["job_results"].append({"status": out.get("status"), "error": out.get("error")})
            except Exception as exc:  # noqa: BLE001
                res["job_results"].append({"error": repr(exc)[:200]})
        try:
            out = await asyncio.wait_for(ws_job, self.args.drain_timeout + 10)
            res["websocket_job"] = out.get("output")
        except Exception as exc:  # noqa: BLE001
            res["websocket_job"] = {"error": repr(exc)[:200]}
        code = await asyncio.to_thread(wait_exit, self.proc, self.args.drain_timeout + 15)
        res["exit_code"] = code
        res["exit_after_s"] = round(time.monotonic() - t_sig, 2)
        checks = {
            "streams_got_final_and_done": all(r.get("done") and r.get("finals") for r in res["stream_results"]),
            "streams_closed_1001_or_1012": all(r.get("close_code") in (1001, 1012) for r in res["stream_results"]),
            "inflight_jobs_completed": all(r.get("status") == "COMPLETED" for r in res["job_results"]),
            "websocket_job_reason_shutdown": (res["websocket_job"] or {}).get("reason") == "shutdown",
            "exit_code_0": code == 0,
            "exit_within_drain_timeout": res["exit_after_s"] <= self.args.drain_timeout + 2,
        }
        res["checks"] = checks
        for name, ok in checks.items():
            if not ok:
                self.failures.append({"kind": "drain", "check": name})
        return res

    async def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="soak-"))
        fs_holder = {}
        files = FileServer(work)
        fs_holder["port"] = files.port
        mat = make_material(work, files.port, sentences=self.args.sentences)
        self.start_worker(files.port)
        async with http_session() as http:  # a fresh connection per request (see http_session)
            ws_job = await self.start_websocket_job(http)
            self.t0 = time.monotonic()
            self.deadline = self.t0 + self.args.seconds
            first = await self.sample(http)
            self.samples.append(first)
            tasks = [asyncio.create_task(self.sampler(http)), asyncio.create_task(self.hostile_client(http, mat))]
            tasks += [
                asyncio.create_task(self.batch_client(http, k, files.port, mat)) for k in range(self.args.batch_clients)
            ]
            tasks += [asyncio.create_task(self.stream_client(k, mat)) for k in range(self.args.streams)]
            await asyncio.gather(*tasks[1:])
            await asyncio.sleep(2)  # let the worker settle, then the last sample before the signal
            last = await self.sample(http)
            self.samples.append(last)
            tasks[0].cancel()
            drain = await self.drain_phase(http, mat, ws_job)
        files.close()
        return self.summary(first, last, drain)

    def summary(self, first: dict, last: dict, drain: dict) -> dict:
        valid = [e for e in self.events if e["kind"] in ("batch", "stream")]
        keys = ("rss_mb", "fds", "threads", "children", "temp_files")
        return {
            "seconds": self.args.seconds,
            "model": shown(self.args.model),
            "requests": len(self.events),
            "valid_requests": len(valid),
            "valid_failed": sum(not e["ok"] for e in valid),
            "hostile_requests": sum(e["kind"] == "hostile" for e in self.events),
            "hostile_wrong_code": sum(e["kind"] == "hostile" and not e["ok"] for e in self.events),
            "streams_by_mode": {
                m: sum(e.get("mode") == m for e in self.events) for m in ("complete", "pause", "abrupt")
            },
            "start": {k: first.get(k) for k in keys},
            "end": {k: last.get(k) for k in keys},
            "latency": latency_table(self.events, self.args.window_s),
            "metrics_at_end": {k: v for k, v in last.items() if k.startswith("asr_")},
            "drain": drain,
            "failures": self.failures[:50],
        }


def wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited ({proc.returncode}) during start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"port {port} did not open")


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


def parse_metrics(text: str) -> dict:
    """The few series the soak tracks, from the Prometheus text (also proves it parses)."""
    from prometheus_client.parser import text_string_to_metric_families

    want = {
        "asr_active_sessions",
        "asr_live_streams",
        "asr_jobs_running",
        "asr_jobs_queued",
        "asr_stream_lag_seconds_max",
        "asr_draining",
    }
    out: dict = {"asr_errors_total": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in want:
                out[s.name] = s.value
            elif s.name == "asr_errors_total":
                out["asr_errors_total"] += s.value
            elif s.name == "asr_audio_seconds_total":
                out[f"asr_audio_seconds_{s.labels.get('kind')}"] = round(s.value, 1)
    return out


def latency_table(events: list[dict], window_s: float) -> list[dict]:
    """p50/p95/p99 latency per time window and kind (batch: job wall time; stream: stop -> done)."""
    rows = []
    if not events:
        return rows
    end = max(e["t"] for e in events)
    for w0 in np.arange(0.0, end + 1e-9, window_s):
        row = {"t0": round(float(w0), 1)}
        for kind in ("batch", "stream", "hostile"):
            xs = [
                e["latency"]
                for e in events
                if e["kind"] == kind and e["latency"] is not None and w0 <= e["t"] < w0 + window_s
            ]
            if xs:
                row[kind] = {"n": len(xs), **{f"p{q}": round(float(np.percentile(xs, q)), 3) for q in (50, 95, 99)}}
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# stream sessions
async def stream_session(url: str, audio: np.ndarray, mode: str) -> dict:
    """One live session paced in real time. ``complete``: send all, stop, wait for done;
    ``pause``: send half, send nothing for 3 s, send the rest, stop; ``abrupt``: send a random
    part and drop the TCP connection without a close handshake."""
    from client import ASRWebSocketClient, pcm16_bytes

    pcm = pcm16_bytes(audio)
    frame = int(0.1 * SR) * 2
    res = {"text": "", "stop_to_done": None, "max_gap": None, "final_lag": None}
    async with ASRWebSocketClient(url, TOKEN) as c:
        await c.start(SR, chunk_duration=0.0)
        t0 = time.monotonic()
        stop_at = {}
        cut = len(pcm) // 2 // frame * frame
        if mode == "abrupt":
            cut = random.randrange(frame, len(pcm) - frame) // frame * frame

        async def sender():
            offset = 0.0
            for k, i in enumerate(range(0, len(pcm), frame)):
                if mode == "abrupt" and i >= cut:
                    c.ws.transport.abort()  # no close frame: the server sees the socket die
                    return
                if mode == "pause" and i == cut:
                    await asyncio.sleep(3.0)
                    offset += 3.0
                await c.send_audio(pcm[i : i + frame])
                await asyncio.sleep(max(0.0, t0 + offset + (k + 1) * 0.1 - time.monotonic()))
            stop_at["t"] = time.monotonic()
            await c.stop()

        task = asyncio.create_task(sender())
        times = []
        try:
            async for msg in c:
                times.append(time.monotonic())
                if msg.get("type") == "transcription" and msg.get("is_final"):
                    lag = msg.get("lag")
                    if lag is not None:
                        res["final_lag"] = max(res["final_lag"] or 0.0, lag)
                if msg.get("type") == "done":
                    res["text"] = msg["text"]
                    res["stop_to_done"] = time.monotonic() - stop_at["t"]
                if msg.get("type") == "error":
                    raise RuntimeError(f"server error {msg}")
        except Exception:
            if mode != "abrupt":
                raise
        await task
        if len(times) > 1:
            res["max_gap"] = round(float(np.max(np.diff(times))), 3)
    return res


async def stream_until_closed(url: str, audio: np.ndarray, token: str = TOKEN, on_sent=None) -> dict:
    """Send ``audio`` in real time without ``stop``, then read until the server closes: what a
    client sees when the worker drains. ``errors`` (their codes) and ``close_reason`` say why a
    stream ended without its ``done`` (e.g. ``idle_timeout`` / "idle timeout" with close 1000).
    ``on_sent()``: called 0.5 s after the last audio was sent (e.g. to send the SIGTERM)."""
    from websockets.exceptions import ConnectionClosed

    from client import ASRWebSocketClient, pcm16_bytes

    pcm = pcm16_bytes(audio)
    frame = int(0.1 * SR) * 2
    out = {"finals": [], "done": None, "close_code": None, "close_reason": None, "errors": []}
    async with ASRWebSocketClient(url, token) as c:
        await c.start(SR, chunk_duration=0.0)
        t0 = time.monotonic()

        async def sender():
            for k, i in enumerate(range(0, len(pcm), frame)):
                await c.send_audio(pcm[i : i + frame])
                await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.1 - time.monotonic()))
            if on_sent is not None:
                await asyncio.sleep(0.5)
                on_sent()

        task = asyncio.create_task(sender())
        try:
            while True:
                msg = json.loads(await c.ws.recv())
                if msg.get("type") == "transcription" and msg.get("is_final"):
                    out["finals"].append(msg["text"])
                elif msg.get("type") == "done":
                    out["done"] = msg
                elif msg.get("type") == "error":
                    out["errors"].append(msg.get("code"))
        except ConnectionClosed as exc:
            out["close_code"] = exc.rcvd.code if exc.rcvd else None
            out["close_reason"] = exc.rcvd.reason if exc.rcvd else None
        task.cancel()
    return out


# ---------------------------------------------------------------------------------------------
def plot(out: Path, samples: list[dict], latency: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True)
    t = [s["t"] / 60 for s in samples]
    for ax, key, label in zip(
        axes.flat, ("rss_mb", "fds", "threads", "temp_files"), ("RSS (MiB)", "open fds", "threads", "temp files")
    ):
        ax.plot(t, [s.get(key) for s in samples], marker=".", lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    fig.suptitle(f"Worker resources during the soak ({title})")
    fig.tight_layout()
    fig.savefig(out / "resources.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, kind, label in zip(axes, ("batch", "stream"), ("batch job wall time (s)", "stream stop -> done (s)")):
        rows = [r for r in latency if kind in r]
        x = [(r["t0"]) / 60 for r in rows]
        for q in ("p50", "p95", "p99"):
            ax.plot(x, [r[kind][q] for r in rows], marker=".", lw=1, label=q)
        ax.set_title(label)
        ax.set_xlabel("minutes")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_ylim(bottom=0)
    fig.suptitle(f"Latency percentiles per window ({title})")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float)
    g.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-requests", type=int, default=100000)
    ap.add_argument("--streams", type=int, default=3, help="concurrent stream clients")
    ap.add_argument("--batch-clients", type=int, default=2, help="concurrent valid batch clients")
    ap.add_argument("--hostile-every", type=float, default=2.0, help="pause between hostile jobs, s")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--window-s", type=float, default=60.0, help="latency percentile window")
    ap.add_argument("--drain-timeout", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sentences", type=int, default=3, help="distinct sentences encoded in every format")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument(
        "--no-text-check",
        action="store_true",
        help="valid = completed, transcripts not compared (a model with random weights)",
    )
    ap.add_argument("--out", default="soak-out")
    args = ap.parse_args(argv)
    if args.minutes:
        args.seconds = args.minutes * 60
    global CHECK_TEXT
    CHECK_TEXT = not args.no_text_check
    out = Path(args.out)
    soak = Soak(args, out)
    try:
        summary = asyncio.run(soak.run())
    finally:
        if getattr(soak, "proc", None) is not None and soak.proc.poll() is None:
            soak.proc.kill()
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "samples.json").write_text(json.dumps(soak.samples) + "\n")
    (out / "events.json").write_text(json.dumps(soak.events) + "\n")
    if not args.no_plots:
        plot(out, soak.samples, summary["latency"], f"{Path(args.model).name}, {args.seconds / 60:.0f} min")
    brief = {
        k: summary[k]
        for k in (
            "requests",
            "valid_requests",
            "valid_failed",
            "hostile_requests",
            "hostile_wrong_code",
            "start",
            "end",
        )
    }
    brief["drain_checks"] = summary["drain"]["checks"]
    print(json.dumps(brief))
    ok = (
        summary["valid_failed"] == 0 and summary["hostile_wrong_code"] == 0 and all(summary["drain"]["checks"].values())
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
