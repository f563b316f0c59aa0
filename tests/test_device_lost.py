"""A lost GPU and a failing stream: nobody is left hanging (docs/RELIABILITY.md, "A lost GPU").

A non-OOM CUDA error (torch's ``AcceleratorError``, the message a real H200 gave) is injected on
CPU where the GPU would raise it: in the streaming step and in a batch pass after start-up.
In-process: every live stream gets one ``internal_error`` and a 1011 close within a second, ``/ping``
answers 503, new sessions are refused, a queue job fails with ``internal_error`` and
``refresh_worker`` (the RunPod SDK turns it into ``stopPod``). A real worker process (the fault
injected by tests/fault_injection/sitecustomize.py) does the same and exits non-zero within the
short drain. A stream whose step fails for a reason of its own is told once and gets its ``done``,
while the other streams of that step keep their results. Loopback only."""

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jiwer
import numpy as np
import pytest
import torch
import websockets

import rp_handler
from client import pcm16_bytes as pcm16
from parakeet_worker.config import errors
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.runtime import lifecycle
from tests.helpers import ROOT, TINY_MODEL, WorkerThread, free_port, requires_model, wav_b64
from tools.test_model import synth

pytestmark = requires_model
CUDA_MESSAGE = "CUDA error: an illegal memory access was encountered"
MAX_WER = 0.34  # the tiny model on one clean sentence of its training words: one slip at most
TEXT = "good morning teacher please open window today"


@pytest.fixture(scope="module")
def speech():
    utt = synth.synthesize(TEXT, "en", "en-us", random.Random(7), augment=False)
    return np.concatenate([utt.audio, np.zeros(16000, np.float32)])


@pytest.fixture
def no_exit(monkeypatch):
    """A poisoned in-process worker must not end the test process: the drain's watchdog is
    disarmed, and the process-wide lifecycle is reset afterwards."""
    monkeypatch.setattr(lifecycle.LIFECYCLE, "exit_on_overrun", False)
    yield
    lifecycle.LIFECYCLE.reset()


@pytest.fixture
def fresh_worker(tiny_model, no_exit):
    """A worker on its own engine: a lost GPU is for good, so no other test may share it."""
    settings = Settings(model="tiny", max_batch_size=8, max_batch_wait_ms=50, warmup=False)
    saved = rp_handler.SETTINGS
    rp_handler.SETTINGS = settings
    w = WorkerThread(Engine(settings, model=tiny_model))
    yield w
    w.stop()
    rp_handler.SETTINGS = saved


def ping(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


async def stream(url: str, audio: np.ndarray, *, pace_s: float = 0.0, chunk: int = 3200, on_start=None):
    """One session: start, audio in ``chunk`` samples (``pace_s`` apart), stop. Returns every
    message (with its arrival time) and the close code."""
    got: list[tuple[float, dict]] = []
    async with websockets.connect(url, max_size=None) as ws:
        welcome = json.loads(await ws.recv())
        await ws.send(json.dumps({"action": "start", "sample_rate": 16000}))
        got.append((time.monotonic(), json.loads(await ws.recv())))
        if on_start:
            await on_start(welcome["session_id"])

        async def send():
            try:
                for k in range(0, len(audio), chunk):
                    await ws.send(pcm16(audio[k : k + chunk]))
                    await asyncio.sleep(pace_s)
                await ws.send(json.dumps({"action": "stop"}))
            except websockets.ConnectionClosed:
                pass

        sender = asyncio.ensure_future(send())
        try:
            async for raw in ws:
                msg = json.loads(raw)
                got.append((time.monotonic(), msg))
                if msg.get("type") == "done":
                    break
        except websockets.ConnectionClosed:
            pass  # the server closed it (close_code says how)
        finally:
            sender.cancel()
        await ws.close()
    return got, ws.close_code


def kinds(got) -> list[str]:
    return [m.get("code") or m["type"] for _, m in got if m["type"] in ("error", "done")]


# ---------------------------------------------------------------------------------------------
def test_failing_stream_is_told_once_gets_done_and_the_others_keep_their_results(fresh_worker, speech, monkeypatch):
    w = fresh_worker
    pipe = w.server.decoder.pipeline
    real, target, shared_steps = pipe.transcribe_step, {}, []

    def flaky(frames):  # a fault of the target stream's own, inside a step shared with others
        if any(f.stream_id == target.get("id") for f in frames):
            if len(frames) > 1:
                shared_steps.append(len(frames))
            raise RuntimeError("injected fault for one stream")
        return real(frames)

    monkeypatch.setattr(pipe, "transcribe_step", flaky)

    async def mark(session_id):  # (on the worker's loop: its state is read directly)
        target["id"] = w.server.sessions[session_id].live.stream.id

    async def run():
        # three streams sent faster than real time, so their frames share steps
        return await asyncio.gather(stream(w.url, speech, on_start=mark), stream(w.url, speech), stream(w.url, speech))

    (bad, bad_code), *good = w.submit(run()).result(180)
    assert shared_steps, "the failing stream never shared a step: the retry was not exercised"
    # told once, then done on its stop: no not_started flood, the connection stays usable
    assert kinds(bad) == [errors.INTERNAL_ERROR, "done"], kinds(bad)
    assert bad_code == 1000
    for got, code in good:
        finals = " ".join(m["text"] for _, m in got if m["type"] == "transcription" and m["is_final"])
        assert kinds(got) == ["done"] and code == 1000, kinds(got)
        assert jiwer.wer(TEXT, finals) <= MAX_WER, finals
    assert w.server.ready and ping(w.port) == 200  # one stream's fault is not the worker's
    assert not lifecycle.LIFECYCLE.poisoned


def test_cuda_error_in_a_stream_step_fails_every_stream_at_once_and_the_worker_reports_unhealthy(
    fresh_worker, speech, monkeypatch
):
    w = fresh_worker
    pipe = w.server.decoder.pipeline
    real, raised_at, calls = pipe.transcribe_step, [], []

    def poisoned(frames):
        calls.append(len(frames))
        if len(calls) > 3:  # a few good steps, then the context is lost
            raised_at.append(time.monotonic())
            raise torch.AcceleratorError(CUDA_MESSAGE)
        return real(frames)

    monkeypatch.setattr(pipe, "transcribe_step", poisoned)

    async def run():  # two live streams at real-time pace
        return await asyncio.gather(stream(w.url, speech, pace_s=0.2), stream(w.url, speech, pace_s=0.2))

    results = w.submit(run()).result(120)
    for got, code in results:
        errs = [(t, m) for t, m in got if m["type"] == "error"]
        assert [m["code"] for _, m in errs] == [errors.INTERNAL_ERROR], got
        assert errs[0][0] - raised_at[0] < 1.0  # told within a second of the fault
        assert "CUDA" not in errs[0][1]["message"] and "Traceback" not in errs[0][1]["message"]
        assert code == 1011
    assert lifecycle.LIFECYCLE.poisoned and lifecycle.LIFECYCLE.draining
    assert ping(w.port) == 503
    with pytest.raises(websockets.InvalidStatus):  # new sessions are refused before the upgrade
        w.submit(stream(w.url, speech)).result(30)
    # a queue job now fails at once, asking RunPod for a new worker
    out = w.run_jobs([{"audio_base64": wav_b64(speech)}])[0]
    assert out["error"].startswith(errors.INTERNAL_ERROR) and out["refresh_worker"] is True


def test_cuda_error_in_offline_decoding_fails_the_job_with_refresh_worker_and_marks_the_worker(
    fresh_worker, speech, monkeypatch
):
    from runpod.serverless.modules.rp_job import run_job

    w = fresh_worker
    engine = w.engine
    assert w.run_jobs([{"audio_base64": wav_b64(speech)}])[0]["text"]  # healthy before the fault
    monkeypatch.setattr(
        engine, "_model_pass", lambda *a, **k: (_ for _ in ()).throw(torch.AcceleratorError(CUDA_MESSAGE))
    )
    t0 = time.monotonic()
    outs = w.run_jobs([{"audio_base64": wav_b64(speech)}] * 3)
    assert time.monotonic() - t0 < 5.0
    for out in outs:  # every job of the failed batch, none retried clip by clip on a dead context
        assert out["error"].startswith(errors.INTERNAL_ERROR) and out["refresh_worker"] is True, out
        assert "CUDA" not in out["error"]
    assert engine.lost and lifecycle.LIFECYCLE.poisoned and ping(w.port) == 503
    # what the RunPod SDK makes of it: a failed job and stopPod, so the platform replaces the worker
    job = {"id": "lost-gpu", "input": {"audio_base64": wav_b64(speech)}}
    result = w.submit(run_job(rp_handler.handler, job)).result(30)
    assert result["error"].startswith(errors.INTERNAL_ERROR) and result["stopPod"] is True


# ---------------------------------------------------------------------------------------------
# a real worker process, the fault injected where the GPU would raise it
def start_worker(mode: str, tmp_path, extra_env=None):
    port = free_port()
    env = {
        **os.environ,
        "PARAKEET_MODEL": str(TINY_MODEL),
        "DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
        "WS_HOST": "127.0.0.1",
        "WORKER_MODE": "load_balancer",
        "PORT": str(port),
        "DRAIN_TIMEOUT_S": "30",
        "INJECT_DEVICE_ERROR": mode,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "fault_injection"), os.environ.get("PYTHONPATH", "")]),
        **(extra_env or {}),
    }
    for k in ("WS_PORT", "WS_AUTH_TOKEN", "API_TOKEN"):
        env.pop(k, None)
    log_path = tmp_path / f"worker-{mode}.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "rp_handler.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while ping_or_none(port) != 200:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        assert time.time() < deadline, "the worker did not get ready"
        time.sleep(0.2)
    return proc, port, log_path


def ping_or_none(port):
    try:
        return ping(port)
    except OSError:
        return None


def wait_exit(proc, log_path, timeout):
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the worker did not exit: " + log_path.read_text()[-3000:]) from None


def test_real_worker_with_a_lost_gpu_in_the_stream_step_tells_the_client_and_exits_nonzero(tmp_path, speech):
    proc, port, log_path = start_worker("stream", tmp_path)
    try:
        got, code = asyncio.run(stream(f"ws://127.0.0.1:{port}/", speech, pace_s=0.2))
        t_err = next(t for t, m in got if m["type"] == "error")
        assert [m["code"] for _, m in got if m["type"] == "error"] == [errors.INTERNAL_ERROR]
        assert code == 1011
        # /ping no longer 200 within a second of the client's error, then the process is gone
        status = ping_or_none(port)
        assert status in (503, None) and time.monotonic() - t_err < 1.0, status
        rc = wait_exit(proc, log_path, lifecycle.POISON_DRAIN_S + 5)
        assert rc == lifecycle.EXIT_DEVICE_LOST
        log = log_path.read_text()
        assert sum("GPU failed" in line for line in log.splitlines()) == 1, log[-2000:]  # one line says why
    finally:
        if proc.poll() is None:
            proc.kill()


def test_real_worker_with_a_lost_gpu_in_offline_decoding_answers_503_and_exits_nonzero(tmp_path, speech):
    import openai

    from tests.helpers import write_wav

    proc, port, log_path = start_worker("offline", tmp_path)
    try:
        wav = write_wav(tmp_path / "speech.wav", speech)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.audio.transcriptions.create(model="parakeet", file=open(wav, "rb"))
        t_err = time.monotonic()  # the client has its error: /ping must say so within a second
        err = info.value
        assert err.status_code == 503 and err.body["code"] == errors.INTERNAL_ERROR, err.body
        assert "CUDA" not in json.dumps(err.body)
        status = ping_or_none(port)
        assert status in (503, None) and time.monotonic() - t_err < 1.0, status
        assert wait_exit(proc, log_path, lifecycle.POISON_DRAIN_S + 5) == lifecycle.EXIT_DEVICE_LOST
    finally:
        if proc.poll() is None:
            proc.kill()


def test_real_queue_worker_with_a_lost_gpu_fails_the_job_and_exits_nonzero(tmp_path, speech):
    """Queue mode (the RunPod SDK's local API): the job fails with internal_error, and once its
    answer is out the process exits with code 3 so the platform replaces it."""
    import base64

    from tests.helpers import write_wav

    api_port = free_port()
    env = {
        **os.environ,
        "PARAKEET_MODEL": str(TINY_MODEL),
        "DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
        "INJECT_DEVICE_ERROR": "offline",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "fault_injection"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("WORKER_MODE", None)
    log_path = tmp_path / "queue.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "rp_handler.py",
            "--rp_serve_api",
            "--rp_api_host",
            "127.0.0.1",
            "--rp_api_port",
            str(api_port),
        ],
        cwd=ROOT,
        env=env,
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        audio = base64.b64encode(write_wav(tmp_path / "s.wav", speech).read_bytes()).decode()
        body = json.dumps({"input": {"audio_base64": audio}}).encode()
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "the queue worker did not get ready"
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{api_port}/runsync", data=body, headers={"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=60) as r:
                    out = json.loads(r.read())
                break
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        assert out["status"] == "FAILED" and out["error"].startswith(errors.INTERNAL_ERROR), out
        assert "CUDA" not in out["error"]
        assert wait_exit(proc, log_path, lifecycle.POISON_DRAIN_S + 5) == lifecycle.EXIT_DEVICE_LOST
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_lost_gpu_ends_every_dialects_live_socket_with_its_own_error_and_1011(fresh_worker, speech, monkeypatch):
    """Deepgram's and OpenAI's live sockets share the streaming decoder: a CUDA error in a step
    tells each client in its dialect (an ``Error`` / an ``error`` event) and closes with 1011."""
    import aiohttp

    w = fresh_worker
    pipe = w.server.decoder.pipeline

    def poisoned(frames):
        raise torch.AcceleratorError(CUDA_MESSAGE)

    monkeypatch.setattr(pipe, "transcribe_step", poisoned)
    pcm = pcm16(speech)
    b64 = __import__("base64").b64encode(pcm).decode()

    async def dialect(path, first, frames):
        got = []
        async with aiohttp.ClientSession() as http, http.ws_connect(f"ws://127.0.0.1:{w.port}{path}") as ws:
            for f in frames:
                await (ws.send_str(f) if isinstance(f, str) else ws.send_bytes(f))
            async with asyncio.timeout(30):
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        got.append(json.loads(msg.data))
            return got, ws.close_code

    async def both():
        return await asyncio.gather(
            dialect("/v1/listen?encoding=linear16&sample_rate=16000", None, [pcm]),
            dialect(
                "/v1/realtime?intent=transcription",
                None,
                [
                    json.dumps(
                        {
                            "type": "session.update",
                            "session": {
                                "type": "transcription",
                                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
                            },
                        }
                    ),
                    json.dumps({"type": "input_audio_buffer.append", "audio": b64}),
                ],
            ),
        )

    (dg, dg_code), (rt, rt_code) = asyncio.run(both())
    assert dg_code == 1011 and [m["type"] for m in dg] == ["Error"], dg
    assert rt_code == 1011 and [m for m in rt if m["type"] == "error"][-1]["error"]["code"] == errors.INTERNAL_ERROR
    assert ping(w.port) == 503 and lifecycle.LIFECYCLE.poisoned
