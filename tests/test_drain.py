"""Graceful shutdown: a real worker process, a real SIGTERM, and the client still gets its final.

Load-balancer mode (the WebSocket server alone) gets SIGTERM while a client is mid-utterance: the
client receives its last final and ``done``, then close code 1001, and the process exits 0. Queue
mode (the RunPod SDK's local API, a websocket job, streams mid-utterance and batch jobs in flight
at the signal) is checked the same way by the soak's end in tests/test_soak_smoke.py, plus: the
batch jobs complete and the websocket job ends with ``reason: "shutdown"``. In-process: a draining
server refuses new connections (HTTP 503) and ``/ping`` answers 503. Loopback only."""

import asyncio
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jiwer
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from client import ASRWebSocketClient
from client import pcm16_bytes as pcm16
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from tests.helpers import ROOT, TINY_MODEL, WorkerThread, free_port, requires_model
from tools.test_model import synth

pytestmark = requires_model
DRAIN_TIMEOUT_S = 20
TOKEN = "drain-token"


@pytest.fixture(scope="module")
def utterance():
    rng = random.Random(14)
    a = synth.synthesize("green river open window", "en", "en-us", rng, augment=False)
    b = synth.synthesize("seven yellow birds sing today", "en", "en-us", rng, augment=False)
    # the second sentence is cut off by the signal: no stop, no trailing silence
    return np.concatenate([a.audio, np.zeros(12000, np.float32), b.audio]), f"{a.text} {b.text}"


def start_process(args, env_extra, log_path, ready_port):
    env = {
        **os.environ,
        "PARAKEET_MODEL": str(TINY_MODEL),
        "DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
        "DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
        "WS_HOST": "127.0.0.1",
        **env_extra,
    }
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, f"worker exited during start-up; see {log_path}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/ping", timeout=2) as r:
                if r.status == 200:
                    return proc, log
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    proc.kill()
    pytest.fail("worker did not become ready")


async def stream_then_wait_for_close(url, audio, token=None, on_sent=None):
    """Send ``audio`` without stop, call ``on_sent()``, then read until the server closes."""
    out = {"finals": [], "done": None, "close_code": None}
    async with ASRWebSocketClient(url, token) as c:
        await c.start(16000, chunk_duration=0.0)
        for i in range(0, len(audio), 1600):
            await c.send_audio(pcm16(audio[i : i + 1600]))
        # the server holds the audio (a partial proves it is being decoded) when the signal comes
        while True:
            msg = json.loads(await c.ws.recv())
            if msg.get("type") == "transcription":
                break
        if on_sent is not None:
            on_sent()
        try:
            while True:
                msg = json.loads(await c.ws.recv())
                if msg.get("type") == "transcription" and msg["is_final"]:
                    out["finals"].append(msg["text"])
                elif msg.get("type") == "done":
                    out["done"] = msg
        except ConnectionClosed as exc:
            out["close_code"] = exc.rcvd.code if exc.rcvd else None
    return out


def wait_exit(proc, log_path):
    try:
        return proc.wait(DRAIN_TIMEOUT_S + 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the worker did not exit after SIGTERM; see {log_path}")


def test_sigterm_in_load_balancer_mode_flushes_the_open_utterance_and_exits_0(utterance, tmp_path):
    audio, ref = utterance
    port = free_port()
    log_path = tmp_path / "lb.log"
    proc, log = start_process(["websocket_handler.py", "--host", "127.0.0.1", "--port", str(port)], {}, log_path, port)
    try:
        t_sig = {}

        def sigterm():
            t_sig["t"] = time.monotonic()
            proc.send_signal(signal.SIGTERM)

        res = asyncio.run(stream_then_wait_for_close(f"ws://127.0.0.1:{port}", audio, on_sent=sigterm))
        code = wait_exit(proc, log_path)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert res["done"] is not None, res
    assert jiwer.wer(ref, " ".join(res["finals"])) <= 0.3, res["finals"]  # the cut-off sentence included
    assert res["done"]["text"] == " ".join(t for t in res["finals"] if t)
    assert res["close_code"] == 1001, res
    assert code == 0, log_path.read_text()[-3000:]
    assert '"event":"drain"' in log_path.read_text()


def test_a_draining_server_refuses_new_connections_and_ping_says_503(tiny_model):
    settings = Settings(model="tiny", max_batch_size=4, warmup=False)
    w = WorkerThread(Engine(settings, model=tiny_model), dataclasses.replace(settings, ws_idle_timeout_s=30.0))
    try:

        async def idle_client():
            async with ASRWebSocketClient(w.url) as c:
                try:
                    await c.ws.recv()
                except ConnectionClosed as exc:
                    return exc.rcvd.code if exc.rcvd else None

        idle = w.submit(idle_client())
        deadline = time.monotonic() + 30
        while not w.call(lambda: len(w.server.sessions)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        w.submit(w.server.drain(5.0)).result(30)
        assert idle.result(30) == 1001
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{w.port}/ping", timeout=5)
        assert err.value.code == 503

        async def late_client():
            async with ASRWebSocketClient(w.url):
                pass

        with pytest.raises(Exception) as refused:
            asyncio.run(late_client())
        assert "503" in str(refused.value)
    finally:
        w.stop()


def test_a_request_that_meets_the_listener_closing_is_answered_503_at_once(monkeypatch):
    """The race a health check can lose: its connection is accepted just before the listener
    closes, and its request arrives while the server closes its connections. aiohttp alone drops
    that request and holds the socket until its shutdown timeout; the client must hear 503 at
    once. aiohttp's own steps are held back to open that window exactly: the connection is set
    up, but its reader has not started when the close marks every connection closing."""
    import aiohttp.web_protocol
    import aiohttp.web_server

    from parakeet_worker.serving.asr_server import ASRServer

    reader_go, closed_marked, shutdown_go = (asyncio.Event() for _ in range(3))
    real_start = aiohttp.web_protocol.RequestHandler.start
    real_shutdown = aiohttp.web_server.Server.shutdown

    async def late_start(self):
        await reader_go.wait()
        return await real_start(self)

    async def held_shutdown(self, timeout=None):
        closed_marked.set()  # the listener is closed and every connection marked closing
        await shutdown_go.wait()
        return await real_shutdown(self, timeout)

    monkeypatch.setattr(aiohttp.web_protocol.RequestHandler, "start", late_start)
    monkeypatch.setattr(aiohttp.web_server.Server, "shutdown", held_shutdown)

    async def until(condition):
        while not condition():
            await asyncio.sleep(0.005)

    async def scenario():
        server = ASRServer(Settings(model="tiny", warmup=False))
        listener = await server.serve("127.0.0.1", 0)
        manager = listener.runner.server
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        await until(lambda: manager.connections)  # set up, its reader held back
        closing = asyncio.ensure_future(server.close())
        await closed_marked.wait()
        reader_go.set()
        # the reader now waits for a request (unless the server already closed the socket)
        await until(lambda: not manager.connections or manager.connections[0]._waiter is not None)
        shutdown_go.set()
        writer.write(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        t0 = time.monotonic()
        try:
            answer = await asyncio.wait_for(reader.read(), 3.0)
        except TimeoutError:
            answer = b"(no answer within 3 s)"
        waited = time.monotonic() - t0
        await asyncio.wait_for(closing, 10.0)
        writer.close()
        return answer, waited

    answer, waited = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 503") and waited < 1.0, (answer, waited)
