"""The GPU check's `worker` part: the real worker, started as a user would, driven from outside.

    python bench/gpu_worker_check.py --out FILE [--key worker] [--models tiny full] [--modes lb queue]
        [--streams-tiny 64] [--streams-full 128] [--full-model PATH] [--budget-s 220] [--log-dir DIR]
        [--env NAME=VALUE ...] [--graphs-variant [tiny] [full]] [--cpu-smoke]

An in-process check of the engine can pass while the worker fails (the first H200 run: the worker
died at its first live WebSocket step, the engine check did not). So this starts
``python rp_handler.py`` in its own process with the defaults (no DEVICE; only the model, the mode
and a loopback port are set) and talks to it from this one, on 127.0.0.1 only:

- load-balancer mode (``WORKER_MODE=load_balancer``): time to ``/ping`` 200; one OpenAI-route
  request (POST /v1/audio/transcriptions) of tests/assets/sample_en.flac, with WER; N concurrent
  WebSocket streams of that clip then 1 s of silence at real-time pace (100 ms frames, starts spread
  over 0.5 s): per stream ok, errors, finals, ``done``, final latency (the last final's arrival
  minus the moment the clip's last frame was sent, as the H200 notes of 2026-12-04 measured it;
  the clip's last word ends 0.65 s before the clip does; p50/p95), WER of the joined finals; ``/ping``
  and the /metrics counters afterwards; then SIGTERM: exit code and time to exit.
- queue mode (the RunPod SDK's local server, ``--rp_serve_api``): one POST /runsync of the same
  clip (text, WER, time), then SIGTERM.

- a load-balancer worker with ``CUDA_GRAPHS=1`` (the default is off since graphs failed there on
  the first H200; docs/GPU.md: they come back only when this variant passes), measured like the
  first, last for each model (``--graphs-variant``).

All workers of one model start together (start-up is mostly imports and loading, and the others
sit idle while one is measured); the tiny model, then the full-size random one
(``--full-model``, built with tools/test_model/build_full.py when missing; its WER means nothing,
its latency does). More than 64 streams (WS_MAX_SESSIONS's default) raise WS_MAX_SESSIONS to the
stream count, recorded under ``env``. Each worker's log goes to ``--log-dir``; its last 40 lines and
any traceback or CUDA error go into the JSON. Every step has a time limit within ``--budget-s`` and
the JSON is rewritten after each one, so a run cut short keeps what it measured. With ``--key`` the
result goes under that key of an existing JSON file (bench/gpu_check.sh: ``worker`` in
gpu_check.json). ``--cpu-smoke``: 2 streams, tiny model only (tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from _paths import ROOT, shown  # run as a script: puts the repository on sys.path

CLIP = ROOT / "tests" / "assets" / "sample_en.flac"
CLIP_TEXT = "good morning teacher please open window today"  # tests/helpers.py SAMPLE_TEXT
TINY = ROOT / "tests" / "assets" / "tiny_parakeet.nemo"
FRAME_S, SILENCE_S, SPREAD_S = 0.1, 1.0, 0.5
log = logging.getLogger("gpu_worker_check")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w' ]+", " ", (text or "").lower()).split())


def wer(ref: str, hyp: str) -> float:
    import jiwer

    return round(float(jiwer.wer(normalise(ref), normalise(hyp) or "<empty>")), 4)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, round(q * (len(v) - 1)))], 3)


class Report:
    """The result, rewritten after every step (under ``key`` of an existing file when given)."""

    def __init__(self, out: Path, key: str | None, budget_s: float):
        self.out, self.key, self.budget, self.t0 = out, key, budget_s, time.monotonic()
        self.data: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "models": {}}
        self.current: list[tuple[dict, str, float]] = []  # the steps in progress (two waits at once)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        whole = self.data
        if self.key:
            try:
                whole = json.loads(self.out.read_text())
            except (OSError, ValueError):
                whole = {}
            whole[self.key] = self.data
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(whole, indent=1, default=str))
        tmp.replace(self.out)

    async def step(self, where: dict, name: str, fn, cap_s: float, need_s: float = 5.0, floor_s: float = 0.0):
        """Run ``fn()`` (a coroutine) within min(cap_s, time left) (but ``floor_s`` at least: stopping
        a worker); record its dict or its error."""
        left = self.left()
        if left < need_s:
            res = {"skipped": f"time budget: {left:.0f} s left, needs ~{need_s:.0f} s"}
        else:
            limit = min(cap_s, max(left, floor_s))
            t = time.monotonic()
            log.info("%s (limit %.0f s)", name, limit)
            self.current.append(entry := (where, name, t))
            try:
                res = await asyncio.wait_for(fn(), limit)
            except TimeoutError:
                res = {"error": f"timed out after {limit:.0f} s"}
            except Exception as exc:  # noqa: BLE001 - record it; the next step still runs
                res = {"error": f"{type(exc).__name__}: {exc}"}
            res.setdefault("seconds", round(time.monotonic() - t, 2))
            self.current.remove(entry)
        where[name] = res
        self.save()
        return res

    def interrupted(self, why: str) -> None:
        """Stopped from outside (the caller's time limit): say so, and where."""
        self.data["interrupted"] = why
        for where, name, t in self.current:
            where[name] = {"error": f"interrupted ({why}) after {time.monotonic() - t:.0f} s"}
        self.save()


class Worker:
    """``python rp_handler.py ARGS`` with its output in a log file."""

    live: list[Worker] = []  # killed on the way out, whatever ends this check

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()/kill()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "rp_handler.py", *args], cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        Worker.live.append(self)

    def gone(self) -> int | None:
        return self.proc.poll()

    async def stop(self, limit_s: float) -> dict:
        """SIGTERM; the exit code and how long the drain took (SIGKILL after ``limit_s``)."""
        if self.proc.poll() is not None:
            return {"exit_code": self.proc.returncode, "exited_before_sigterm": True}
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        while self.proc.poll() is None and time.monotonic() - t < limit_s:
            await asyncio.sleep(0.1)
        res = {"exit_code": self.proc.poll(), "exit_s": round(time.monotonic() - t, 2)}
        if res["exit_code"] is None:
            self.kill()
            res.update(killed=True, exit_code=self.proc.returncode)
        self._log.close()
        return res

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def log_report(self, tail: int = 40) -> dict:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return {"log_file": str(self.log_path), "log_tail": lines[-tail:], "log_errors": error_blocks(lines)}


def error_blocks(lines: list[str], max_blocks: int = 4, max_lines: int = 30) -> list[str]:
    """Each traceback (up to its exception line) and every line naming a CUDA error, in order."""
    out: list[str] = []
    blocks, i = 0, 0
    while i < len(lines) and blocks < max_blocks:
        if lines[i].startswith("Traceback"):
            j = i + 1
            while j < len(lines) and lines[j][:1].isspace():  # the frames, up to the exception line
                j += 1
            block = lines[i : j + 1]
            out.append("\n".join(block if len(block) <= max_lines else block[:5] + ["..."] + block[-(max_lines - 6) :]))
            blocks, i = blocks + 1, j + 1
            continue
        if "CUDA error" in lines[i]:
            out.append(lines[i])
        i += 1
    return out[:20]


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any of the worker's settings or RunPod's variables (so the worker
    runs on its defaults), plus ``extra``."""
    from parakeet_worker.config.settings import ENV

    names = {n for ns in ENV.values() for n in ns}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("RUNPOD_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


# ---------------------------------------------------------------------------------------------
# the client side
async def wait_ping(worker: Worker, base: str) -> dict:
    """Poll /ping until 200; what it answered meanwhile. Fails at once if the worker exits."""
    import aiohttp

    seen: collections.Counter = collections.Counter()
    async with aiohttp.ClientSession() as s:
        while True:
            if worker.gone() is not None:
                return {"error": f"worker exited with {worker.gone()} while starting", "ping_seen": dict(seen)}
            try:
                async with s.get(f"{base}/ping", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    seen[str(r.status)] += 1
                    if r.status == 200:
                        return {"ready_s": round(time.monotonic() - worker.t0, 1), "ping_seen": dict(seen)}
            except (aiohttp.ClientError, TimeoutError):
                seen["no answer"] += 1
            await asyncio.sleep(0.25)


async def wait_port(worker: Worker, port: int) -> dict:
    """Queue mode opens its port once the engine is warm."""
    while True:
        if worker.gone() is not None:
            return {"error": f"worker exited with {worker.gone()} while starting"}
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return {"ready_s": round(time.monotonic() - worker.t0, 1)}
        except OSError:
            await asyncio.sleep(0.25)


async def openai_request(base: str, clip: bytes) -> dict:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", clip, filename=CLIP.name, content_type="audio/flac")
    form.add_field("model", "whisper-1")
    t = time.monotonic()
    async with aiohttp.ClientSession() as s, s.post(f"{base}/v1/audio/transcriptions", data=form) as r:
        body = await r.text()
        res = {
            "status": r.status,
            "latency_s": round(time.monotonic() - t, 3),
            "served_model": r.headers.get("openai-model"),
        }
    if r.status != 200:
        return {**res, "error": body[:500]}
    text = json.loads(body).get("text", "")
    return {**res, "text": text, "wer": wer(CLIP_TEXT, text)}


async def one_stream(session, url: str, frames: list[bytes], n_speech: int, delay: float, limit_s: float) -> dict:
    r: dict = {
        "ok": False,
        "errors": [],
        "finals": 0,
        "partials": 0,
        "done": False,
        "final_latency_s": None,
        "text": "",
        "max_lag_s": 0.0,
    }
    await asyncio.sleep(delay)
    try:
        await asyncio.wait_for(_stream(session, url, frames, n_speech, r), limit_s)
    except TimeoutError:
        r["errors"].append(f"no done within {limit_s:.0f} s")
    except Exception as exc:  # noqa: BLE001 - a failed stream is a result, not a crash of the check
        r["errors"].append(f"{type(exc).__name__}: {exc}")
    r["ok"] = not r["errors"] and r["done"] and r["finals"] > 0
    return r


async def _stream(session, url: str, frames: list[bytes], n_speech: int, r: dict) -> None:
    import aiohttp

    loop = asyncio.get_running_loop()
    finals: list[tuple[float, str]] = []
    async with session.ws_connect(url, heartbeat=None, max_msg_size=0) as ws:
        first = await ws.receive()
        if first.type != aiohttp.WSMsgType.TEXT or json.loads(first.data).get("type") != "welcome":
            # e.g. a full worker closes with 1013 and its reason
            r["errors"].append(f"no welcome: {first.type.name} {str(first.data)[:100]} {first.extra or ''}".strip())
            return
        await ws.send_json({"action": "start", "sample_rate": 16000})

        async def receive():
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                m = json.loads(msg.data)
                kind = m.get("type")
                if kind == "transcription":
                    r["max_lag_s"] = max(r["max_lag_s"], float(m.get("lag") or 0.0))
                    if m.get("is_final"):
                        finals.append((loop.time(), m.get("text", "")))
                        r["finals"] = len(finals)  # kept even if the stream times out later
                    else:
                        r["partials"] += 1
                elif kind == "error":
                    r["errors"].append(f"{m.get('code')}: {str(m.get('message'))[:200]}")
                elif kind == "done":
                    r["done"] = True
                    r["done_text"] = m.get("text", "")
                    return
            r["errors"].append(f"closed before done (code {ws.close_code})")

        receiver = asyncio.create_task(receive())
        t0, speech_end = loop.time(), None
        try:
            for i, frame in enumerate(frames):  # real-time pace against the clock, not sleep drift
                await asyncio.sleep(max(0.0, t0 + i * FRAME_S - loop.time()))
                if receiver.done():
                    break
                await ws.send_bytes(frame)
                if i == n_speech - 1:
                    speech_end = loop.time()
            if not receiver.done():
                await ws.send_json({"action": "stop"})
            await receiver
        finally:
            receiver.cancel()
    spoken = [(t, x) for t, x in finals if x.strip()] or finals
    r["text"] = " ".join(x for _t, x in finals if x.strip())
    if spoken and speech_end is not None:
        r["final_latency_s"] = round(spoken[-1][0] - speech_end, 3)


async def run_streams(ws_url: str, pcm: bytes, n: int, limit_s: float) -> dict:
    import aiohttp

    step = int(16000 * FRAME_S) * 2
    speech = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    frames = speech + [bytes(step)] * round(SILENCE_S / FRAME_S)
    t = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        rows = await asyncio.gather(
            *(one_stream(s, ws_url, frames, len(speech), SPREAD_S * i / n, limit_s) for i in range(n))
        )
    lat = [x["final_latency_s"] for x in rows if x["final_latency_s"] is not None]
    errors = collections.Counter(e for x in rows for e in x["errors"])
    wers = [wer(CLIP_TEXT, x["text"]) for x in rows]
    return {
        "streams": n,
        "audio_s": round(len(frames) * FRAME_S, 2),
        "wall_s": round(time.monotonic() - t, 2),
        "ok": sum(x["ok"] for x in rows),
        "with_final": sum(x["finals"] > 0 for x in rows),
        "done": sum(x["done"] for x in rows),
        "failed": sum(not x["ok"] for x in rows),
        "errors": dict(errors.most_common(10)),
        "final_latency_p50_s": percentile(lat, 0.5),
        "final_latency_p95_s": percentile(lat, 0.95),
        "final_latency_max_s": max(lat) if lat else None,
        "max_lag_s": round(max(x["max_lag_s"] for x in rows), 3),
        "wer_mean": round(sum(wers) / len(wers), 4),
        "wer_max": max(wers),
        "partials_mean": round(sum(x["partials"] for x in rows) / n, 1),
        "sample_text": next((x["text"] for x in rows if x["ok"]), rows[0]["text"]),
    }


async def after_streams(base: str) -> dict:
    """/ping and the counters of /metrics once the streams are over."""
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/ping") as r:
            res: dict = {"ping": r.status}
        async with s.get(f"{base}/metrics") as r:
            text = await r.text()
    res["metrics"] = {
        ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
        for ln in text.splitlines()
        if ln.startswith("asr_") and "_bucket" not in ln and "_created" not in ln and " " in ln
    }
    return res


async def runsync(base: str, clip: bytes) -> dict:
    import aiohttp

    t = time.monotonic()
    payload = {"input": {"audio_base64": base64.b64encode(clip).decode()}}
    async with aiohttp.ClientSession() as s, s.post(f"{base}/runsync", json=payload) as r:
        res = {"http_status": r.status, "latency_s": round(time.monotonic() - t, 3)}
        body = await r.json(content_type=None)
    out = body.get("output")
    res["status"] = body.get("status")
    if not isinstance(out, dict) or "text" not in out:
        return {**res, "error": str(body)[:500]}
    return {
        **res,
        "text": out["text"],
        "wer": wer(CLIP_TEXT, out["text"]),
        "duration": out.get("duration"),
        "processing_time": out.get("processing_time"),
        "attention": out.get("attention"),
    }


# ---------------------------------------------------------------------------------------------
GRAPHS_ON = "load_balancer_graphs_on"  # the variant docs/GPU.md asks for before graphs go back on


async def check_model(
    rep: Report,
    name: str,
    model: Path,
    streams: int,
    modes: list[str],
    log_dir: Path,
    extra_env: dict[str, str],
    smoke: bool,
    graphs_variant: bool,
) -> None:
    """Start this model's workers together, then measure them one after another: the defaults
    first, the CUDA-graphs variant (known to fail on the H200 of 2026-12-04) last."""
    from parakeet_worker.config.settings import Settings

    res: dict = {"model": shown(model), "streams": streams}
    rep.data["models"][name] = res
    env = {"PARAKEET_MODEL": str(model), **extra_env}
    if streams > Settings.ws_max_sessions and "WS_MAX_SESSIONS" not in env:
        env["WS_MAX_SESSIONS"] = str(streams)  # else the worker refuses the streams over its default
    res["env"] = env
    # label -> (queue mode?, the variant's own settings)
    plan = {
        label: spec
        for label, spec, wanted in (
            ("load_balancer", (False, {}), "lb" in modes),
            ("queue", (True, {}), "queue" in modes),
            (GRAPHS_ON, (False, {"CUDA_GRAPHS": "1"}), "lb" in modes and graphs_variant and "CUDA_GRAPHS" not in env),
        )
        if wanted
    }
    workers: dict[str, Worker] = {}
    ports: dict[str, int] = {}
    ready_cap = 400.0 if smoke else 180.0  # a busy 2-core test machine vs a GPU machine
    clip = CLIP.read_bytes()
    try:
        for label, (queue, own) in plan.items():
            ports[label] = port = free_port()
            if queue:
                args, wenv = ["--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)], {}
            else:
                args, wenv = [], {"WORKER_MODE": "load_balancer", "PORT": str(port), "WS_HOST": "127.0.0.1"}
            workers[label] = Worker(args, worker_env({**env, **own, **wenv}), log_dir / f"{name}_{label}.log")
            res[label] = {"env": own} if own else {}
        res["started_together"] = list(workers)
        rep.save()

        def wait(label):
            w, port = workers[label], ports[label]
            return (
                (lambda: wait_port(w, port)) if plan[label][0] else (lambda: wait_ping(w, f"http://127.0.0.1:{port}"))
            )

        # all start at once; measuring begins once all are warm, so no warm-up overlaps a figure
        ready = dict(
            zip(
                workers,
                await asyncio.gather(
                    *(rep.step(res[label], "ready", wait(label), ready_cap, need_s=20) for label in workers)
                ),
            )
        )
        for label, w in workers.items():
            part, base = res[label], f"http://127.0.0.1:{ports[label]}"
            if "ready_s" in ready[label] and plan[label][0]:
                await rep.step(part, "runsync", lambda b=base: runsync(b, clip), 90)
            elif "ready_s" in ready[label]:
                await measure_lb(rep, part, w, ports[label], clip, streams, smoke)
            await rep.step(part, "sigterm", lambda w=w: w.stop(45), 50, need_s=0, floor_s=15)
            part.update(w.log_report())
            rep.save()
    finally:
        for w in workers.values():
            w.kill()


async def measure_lb(rep: Report, part: dict, w: Worker, port: int, clip: bytes, streams: int, smoke: bool):
    base = f"http://127.0.0.1:{port}"
    await rep.step(part, "openai", lambda: openai_request(base, clip), 60)
    pcm = pcm16(CLIP)
    # a healthy final comes ~1-2.5 s after the audio (H200, up to 384 streams): a hung stream is
    # recorded, not waited out
    limit = len(pcm) / 32000 + SILENCE_S + SPREAD_S + (120 if smoke else 20)
    await rep.step(
        part,
        "streams",
        lambda: run_streams(f"ws://127.0.0.1:{port}/", pcm, streams, limit),
        limit + 15,
        need_s=limit / 2,
    )
    part["alive_after_streams"] = w.gone() is None
    await rep.step(part, "after", lambda: after_streams(base), 15)


def pcm16(path: Path) -> bytes:
    import numpy as np
    import soundfile as sf

    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    assert rate == 16000, rate  # the stream announces 16 kHz
    return (np.clip(audio.mean(axis=1), -1, 1) * 32767).astype("<i2").tobytes()


async def ensure_full_model(rep: Report, path: Path) -> bool:
    """The full-size random model as a file the worker can load: built here if missing (~1 min)."""
    if path.exists():
        rep.data["full_model"] = {"path": str(path), "built": False}
        return True
    where = rep.data.setdefault("full_model", {"path": str(path), "built": True})

    async def build():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "tools/test_model/build_full.py",
            "--out",
            str(path),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await proc.communicate()
        except asyncio.CancelledError:
            proc.kill()
            raise
        if proc.returncode:
            return {"error": f"build_full.py exited {proc.returncode}", "log_tail": out.decode()[-2000:]}
        return {"ok": True}

    res = await rep.step(where, "build", build, 180, need_s=150)
    return res.get("ok", False) and path.exists()


async def main_async(args, rep: Report) -> None:
    rep.data["mode"] = "cpu-smoke" if args.cpu_smoke else "gpu"
    rep.data["reference"] = CLIP_TEXT
    rep.data["clip"] = str(CLIP.relative_to(ROOT))
    rep.data["log_dir"] = str(args.log_dir)
    extra = dict(kv.split("=", 1) for kv in args.env)
    rep.save()
    counts = {"tiny": args.streams_tiny, "full": args.streams_full}
    need = {"tiny": 50, "full": 100}  # on a GPU machine: both starts, the figures and both drains
    for name in args.models:
        if name == "full" and args.cpu_smoke:
            rep.data["models"]["full"] = {
                "skipped": "--cpu-smoke: the full-size model on CPU takes minutes "
                "to build and load; the GPU run covers it"
            }
            rep.save()
            continue
        if rep.left() < need[name]:
            rep.data["models"][name] = {"skipped": f"time budget: {rep.left():.0f} s left"}
            rep.save()
            continue
        model = TINY
        if name == "full":
            model = args.full_model
            if not await ensure_full_model(rep, model):
                rep.data["models"]["full"] = {"skipped": "no full-size model (see full_model)"}
                rep.save()
                continue
        await check_model(
            rep, name, model, counts[name], args.modes, args.log_dir, extra, args.cpu_smoke, name in args.graphs_variant
        )
    rep.save()
    print(json.dumps({"out": str(args.out), "elapsed_s": rep.data["elapsed_s"], "summary": summary(rep.data)}))


def summary(data: dict) -> dict:
    """One line per model: what a reader looks at first."""
    out = {}
    for name, m in data["models"].items():
        if "skipped" in m:
            out[name] = m["skipped"]
            continue
        lb, q, g = m.get("load_balancer", {}), m.get("queue", {}), m.get(GRAPHS_ON, {})
        st, gst = lb.get("streams", {}), g.get("streams", {})
        out[name] = {
            "openai_wer": lb.get("openai", {}).get("wer"),
            "streams_ok": f"{st.get('ok')}/{st.get('streams')}",
            "final_p95_s": st.get("final_latency_p95_s"),
            "runsync_wer": q.get("runsync", {}).get("wer"),
            "exit_codes": [x.get("sigterm", {}).get("exit_code") for x in (lb, q)],
        }
        if g:
            out[name]["graphs_on"] = {
                "streams_ok": f"{gst.get('ok')}/{gst.get('streams')}",
                "final_p95_s": gst.get("final_latency_p95_s"),
                "exit_code": g.get("sigterm", {}).get("exit_code"),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    ap.add_argument("--key", help="write under this key of the (existing) JSON file instead of the whole file")
    ap.add_argument("--models", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    ap.add_argument("--modes", nargs="+", default=["lb", "queue"], choices=["lb", "queue"])
    ap.add_argument("--streams-tiny", type=int, default=None, help="default 64 (--cpu-smoke: 2)")
    ap.add_argument("--streams-full", type=int, default=128)
    ap.add_argument(
        "--full-model",
        type=Path,
        default=Path.home() / ".cache" / "parakeet-test-models" / "full" / "parakeet_tdt_v3_random.nemo",
    )
    ap.add_argument("--budget-s", type=float, default=220.0, help="no step starts or runs past this")
    ap.add_argument("--log-dir", type=Path, help="the workers' logs (default: worker_logs/ beside --out)")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for both workers (e.g. CUDA_GRAPHS=0), recorded under env",
    )
    ap.add_argument(
        "--graphs-variant",
        nargs="*",
        choices=["tiny", "full"],
        default=None,
        help="models that also get a load-balancer worker with CUDA_GRAPHS=1, measured last "
        "(default both; --cpu-smoke: tiny, where it only checks the plumbing)",
    )
    ap.add_argument("--cpu-smoke", action="store_true", help="2 streams, tiny model only (tests)")
    args = ap.parse_args()
    if args.streams_tiny is None:
        args.streams_tiny = 2 if args.cpu_smoke else 64
    if args.graphs_variant is None:
        args.graphs_variant = ["tiny"] if args.cpu_smoke else ["tiny", "full"]
    args.full_model = args.full_model.resolve()
    args.log_dir = args.log_dir or args.out.parent / "worker_logs"
    args.log_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    # `timeout` stops this with SIGTERM: unwind, so the finally blocks stop the workers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rep = Report(args.out, args.key, args.budget_s)
    try:
        asyncio.run(main_async(args, rep))
    except (SystemExit, KeyboardInterrupt):
        rep.interrupted("SIGTERM or SIGINT, the caller's time limit")
        raise
    finally:
        for w in Worker.live:
            w.kill()


if __name__ == "__main__":
    main()
