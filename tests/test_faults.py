"""Fault injection on one in-process worker (tiny model, loopback only): the model raising mid-batch,
a simulated CUDA out-of-memory, ffmpeg killed mid-decode, a download that drops or trickles, clients
that disconnect mid-job or mid-utterance. Each affected job gets a coded error; every other job and
stream sharing the worker is unaffected; the worker keeps serving. Also: fairness (a live stream
keeps receiving results while a long batch job runs), /metrics and the structured logs."""

import asyncio
import contextlib
import dataclasses
import http.server
import json
import logging
import random
import socket
import threading
import time
import urllib.request

import jiwer
import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed

import rp_handler
from client import ASRWebSocketClient
from client import pcm16_bytes as pcm16
from parakeet_worker.config import errors
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.runtime.scheduling import BATCH
from tests.helpers import FORMATS, WorkerThread, encode, requires_model, wav_b64, write_wav
from tools.test_model import synth

pytestmark = requires_model
MAX_WER = 0.34  # the tiny model on one clean espeak-ng sentence of its training words: one slip at most
SENTENCES = [
    "green river open window",
    "brother will bring bread and cheese",
    "father cook dinner every evening",
    "doctor drive car across bridge",
    "good morning teacher please open window today",
]


@pytest.fixture(scope="module")
def clips():
    """(audio, text) of five sentences; the last one is padded to a length no other clip has, so an
    injected fault can single it out inside a batch."""
    out = []
    for k, text in enumerate(SENTENCES):
        utt = synth.synthesize(text, "en", "en-us", random.Random(100 + k), augment=False)
        out.append((utt.audio, utt.text))
    poison, text = out[-1]
    out[-1] = (np.concatenate([poison, np.zeros(1234, np.float32)]), text)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, clips):
    d = tmp_path_factory.mktemp("fault-files")
    write_wav(d / "ok.wav", clips[0][0])
    encode(d / "ok.wav", d / "ok.mp3", FORMATS["mp3"])
    return d


@pytest.fixture(scope="module")
def download_server(files):
    """/ok.wav; /drop promises a body and hangs up halfway; /trickle sends a byte every 0.3 s."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802
            data = (files / "ok.wav").read_bytes()
            if self.path == "/trickle":
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    for b in data[:100]:
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                        time.sleep(0.3)
                except OSError:
                    pass  # the worker gave up: that is the point
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.path == "/drop":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(scope="module")
def worker(tiny_model, download_server):
    port = download_server.rsplit(":", 1)[1]
    settings = Settings(
        model="tiny",
        max_batch_size=8,
        max_batch_wait_ms=100,
        warmup=False,
        allowed_url_hosts=(f"127.0.0.1:{port}",),
        download_timeout_s=2.0,
        ws_idle_timeout_s=30.0,
    )
    saved = rp_handler.SETTINGS
    rp_handler.SETTINGS = settings  # the handler reads its settings from here
    w = WorkerThread(Engine(settings, model=tiny_model))
    yield w
    w.stop()
    rp_handler.SETTINGS = saved


def job(audio) -> dict:
    return {"audio_base64": wav_b64(audio)}


def code_of(out: dict) -> str | None:
    return out["error"].split(":", 1)[0] if "error" in out else None


def assert_transcribed(outs, clips):
    for out, (_, text) in zip(outs, clips):
        assert "error" not in out, out
        assert jiwer.wer(text, out["text"]) <= MAX_WER, (text, out["text"])


def _fail_on_poison(engine, clips, exc):
    """Wrap the model pass: a batch holding the poison clip raises ``exc``."""
    real, poison = engine._model_pass, len(clips[-1][0])

    def flaky(m, batch, length, *rest):
        if poison in length.tolist():
            raise exc
        return real(m, batch, length, *rest)

    return flaky


def test_model_raising_mid_batch_fails_only_that_clip(worker, clips, monkeypatch):
    engine = worker.engine
    monkeypatch.setattr(engine, "_model_pass", _fail_on_poison(engine, clips, RuntimeError("injected fault")))
    before = engine._batcher.largest_batch
    engine._batcher.largest_batch = 0
    outs = worker.run_jobs([job(a) for a, _ in clips])
    assert engine._batcher.largest_batch >= 2, "the poison clip did not share a batch: nothing was tested"
    engine._batcher.largest_batch = max(before, engine._batcher.largest_batch)
    assert code_of(outs[-1]) == errors.INTERNAL_ERROR and "Traceback" not in outs[-1]["error"]
    assert_transcribed(outs[:-1], clips[:-1])
    monkeypatch.undo()
    assert_transcribed(worker.run_jobs([job(clips[-1][0])]), clips[-1:])  # the worker keeps serving


def test_simulated_cuda_out_of_memory_fails_only_that_clip(worker, clips, monkeypatch):
    engine = worker.engine
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated on CPU)")
    monkeypatch.setattr(engine, "_model_pass", _fail_on_poison(engine, clips, oom))
    outs = worker.run_jobs([job(a) for a, _ in clips])
    # the memory error's own code where the engine has one (out-of-memory handling), else internal_error
    assert code_of(outs[-1]) == getattr(errors, "OUT_OF_MEMORY", errors.INTERNAL_ERROR), outs[-1]
    assert_transcribed(outs[:-1], clips[:-1])
    monkeypatch.undo()
    assert_transcribed(worker.run_jobs([job(clips[0][0])]), clips[:1])


def test_ffmpeg_killed_mid_decode_fails_that_job_only(worker, clips, files, tmp_path, monkeypatch):
    """An ``ffmpeg`` on PATH that decodes some output and is then killed (SIGKILL): the MP3 job
    (ffmpeg path) fails with a coded error; WAV jobs (soundfile path) beside it are transcribed."""
    import shutil

    real = shutil.which("ffmpeg")
    shim = tmp_path / "ffmpeg"
    shim.write_text(f'#!/bin/bash\n"{real}" "$@" | head -c 4096\nkill -9 $$\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    mp3 = {"audio_base64": __import__("base64").b64encode((files / "ok.mp3").read_bytes()).decode()}
    outs = worker.run_jobs([mp3] + [job(a) for a, _ in clips[1:3]])
    assert code_of(outs[0]) == errors.INTERNAL_ERROR and "decoder was stopped" in outs[0]["error"], outs[0]
    assert_transcribed(outs[1:], clips[1:3])
    monkeypatch.undo()
    assert_transcribed(worker.run_jobs([mp3]), clips[:1])


def test_download_that_drops_or_trickles_fails_with_download_failed(worker, clips, download_server):
    outs = worker.run_jobs(
        [
            {"audio_url": f"{download_server}/drop"},
            {"audio_url": f"{download_server}/trickle"},
            {"audio_url": f"{download_server}/ok.wav"},
            job(clips[1][0]),
        ]
    )
    assert code_of(outs[0]) == errors.DOWNLOAD_FAILED, outs[0]
    assert code_of(outs[1]) == errors.DOWNLOAD_FAILED and "timed out" in outs[1]["error"], outs[1]
    assert_transcribed(outs[2:], [clips[0], clips[1]])


def test_client_gone_mid_job_leaves_the_batch_and_the_worker_unaffected(worker, clips, monkeypatch, caplog):
    """A job whose caller disconnects while its forward pass is running is cancelled (as an HTTP
    server does): its result is never delivered (the job ends ``cancelled``, nothing is settled on
    its cancelled future), the job batched into the same pass gets its transcript, the jobs queued
    behind the pass run, nothing stays queued, and the next job runs."""
    engine = worker.engine
    long_clip = np.tile(clips[0][0], 8)
    # a companion of the same length (so the two share one pass): another sentence, repeated
    reps = len(long_clip) // len(clips[1][0])
    companion = np.concatenate([np.tile(clips[1][0], reps), np.zeros(len(long_clip) - reps * len(clips[1][0]))])
    companion_text = " ".join([clips[1][1]] * reps)
    in_pass, release = threading.Event(), threading.Event()
    blocked, finished = [], []  # the clip lengths of the held pass; of every pass that completed
    real = engine._model_pass

    def held_pass(m, batch, length, *rest):
        lens = length.tolist()
        if len(long_clip) in lens and not blocked:  # the doomed job's pass: hold it in the model
            blocked.append(lens)
            in_pass.set()
            assert release.wait(120), "the test never released the pass"
        hyps = real(m, batch, length, *rest)
        finished.append(lens)
        return hyps

    monkeypatch.setattr(engine, "_model_pass", held_pass)
    loop_errors = []  # e.g. a result set on the cancelled job's future (InvalidStateError)

    async def until(cond, what):
        deadline = time.monotonic() + 60
        while not cond():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.01)

    async def scenario():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, ctx: loop_errors.append(ctx.get("message")))
        try:
            doomed = asyncio.ensure_future(worker.handler({"id": "gone", "input": job(long_clip)}))
            mate = asyncio.ensure_future(worker.handler({"id": "mate", "input": job(companion)}))
            assert await asyncio.to_thread(in_pass.wait, 120), "the doomed job never reached the model"
            # jobs that arrive while the pass holds the model queue behind it
            queued = [
                asyncio.ensure_future(worker.handler({"id": f"queued{i}", "input": job(a)}))
                for i, (a, _) in enumerate(clips[2:4])
            ]
            await until(lambda: engine._batcher._queue.qsize() == 2, "the later jobs did not queue")
            doomed.cancel()  # the client is gone, mid-pass
            await asyncio.gather(doomed, return_exceptions=True)
            assert blocked[0] not in finished, "the pass was not running when the client left"
            release.set()
            outs = await asyncio.wait_for(asyncio.gather(mate, *queued), 180)
            await until(lambda: engine._batcher._queue.qsize() == 0, "jobs were left queued")
            return outs, doomed.cancelled()
        finally:
            release.set()
            loop.set_exception_handler(None)

    with caplog.at_level(logging.INFO, logger="asr.events"):
        (mate_out, *queued_outs), cancelled = worker.submit(scenario()).result(400)
    assert cancelled, "the job's result was delivered after its client left"
    assert sorted(blocked[0]) == [len(long_clip)] * 2, "the companion did not share the doomed job's pass"
    assert blocked[0] in finished  # the pass ran to its end; only its result for the doomed job was dropped
    assert "error" not in mate_out and jiwer.wer(companion_text, mate_out["text"]) <= MAX_WER, mate_out
    assert_transcribed(queued_outs, clips[2:4])
    assert loop_errors == []
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "asr.events"]
    assert [e["outcome"] for e in events if e.get("event") == "job" and e["id"] == "gone"] == ["cancelled"]
    assert worker.call(lambda: engine._batcher._queue.qsize()) == 0
    monkeypatch.undo()
    assert_transcribed(worker.run_jobs([job(clips[4][0])]), clips[4:5])  # the next job runs


async def _stream(url, audio, *, abort_after_s=None):
    """Stream ``audio`` in 100 ms frames at real time while reading the results; drop the TCP
    connection after ``abort_after_s`` seconds of audio (no stop, no close handshake). Returns
    (messages, seconds from the start at which each arrived)."""
    msgs, times = [], []
    async with ASRWebSocketClient(url) as c:
        await c.start(16000, chunk_duration=0.0)
        t0 = time.monotonic()

        async def send():
            for k, i in enumerate(range(0, len(audio), 1600)):
                if abort_after_s is not None and i >= abort_after_s * 16000:
                    c.ws.transport.abort()
                    return
                await c.send_audio(pcm16(audio[i : i + 1600]))
                await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.1 - time.monotonic()))
            await c.stop()

        sender = asyncio.ensure_future(send())
        try:
            async for m in c:
                msgs.append(m)
                times.append(time.monotonic() - t0)
        except ConnectionClosed:
            if abort_after_s is None:
                raise
        await sender
    return msgs, times


def test_client_disconnecting_mid_utterance_leaves_other_streams_unaffected(worker, clips):
    gap = np.zeros(8000, np.float32)
    audio = np.concatenate([clips[1][0], gap, clips[2][0]])

    async def scenario():
        return await asyncio.gather(_stream(worker.url, audio, abort_after_s=1.0), _stream(worker.url, audio))

    (_, _), (msgs, _) = asyncio.run(scenario())
    done = msgs[-1]
    assert done["type"] == "done"
    assert jiwer.wer(f"{clips[1][1]} {clips[2][1]}", done["text"]) <= MAX_WER, done["text"]
    deadline = time.monotonic() + 10
    while worker.call(lambda: len(worker.server.sessions) + len(worker.server.decoder.streams)):
        assert time.monotonic() < deadline, "the dropped session was not cleaned up"
        time.sleep(0.1)
    assert worker.engine.budget.live_streams == 0


def test_live_stream_keeps_receiving_results_while_a_long_batch_job_runs(worker, clips, monkeypatch):
    """Fairness, with bounds taken from the costs measured in this run. A live stream paced in real
    time shares the engine with one long batch job (local attention: its windows run back to back).
    The streaming step's cost is measured on the stream first, and the live pass budget
    (LIVE_BATCH_PASS_S: a batch pass of about one streaming step's compute) set to two steps:
    - the pass budget: the stream's results never fall behind real time by more than
      max(0.5 s, 10 streaming steps); one uncut pass of the job would hold the model for seconds;
    - the deferral: no batch pass takes the model while the stream has a full step of audio waiting
      (one tolerated: audio may complete a step between the gate's check and this test's look);
    - the job is still transcribed, in windows."""
    engine, decoder = worker.engine, worker.server.decoder
    speech = np.concatenate([np.concatenate([a, np.zeros(4800, np.float32)]) for a, _ in clips[:4]] * 2)
    long_audio = np.tile(speech, 15)  # ~4.6 min: one forward pass of it holds the model for seconds
    real_hold = engine.lock.hold
    steps, passes = [], []  # seconds of each streaming step; (stream demand at its start, seconds) of each batch pass
    stream_warm = threading.Event()  # the stream has been decoded for a few steps

    @contextlib.contextmanager
    def hold(priority=BATCH):
        with real_hold(priority):
            t0, demand = time.monotonic(), decoder.has_demand()
            try:
                yield
            finally:
                if priority == BATCH:
                    passes.append((demand, time.monotonic() - t0))
                else:
                    steps.append(time.monotonic() - t0)
                    if len(steps) >= 4:
                        stream_warm.set()

    monkeypatch.setattr(engine.lock, "hold", hold)

    async def scenario():
        stream = asyncio.ensure_future(_stream(worker.url, speech))
        assert await asyncio.to_thread(stream_warm.wait, 60), "the stream was never decoded"
        step_s = float(np.median(steps))
        monkeypatch.setattr(engine.budget, "target_s", 2 * step_s)
        monkeypatch.setattr(engine.budget, "min_s", 4.0)
        passes.clear()
        out = await worker.handler({"id": "long", "input": {**job(long_audio), "use_local_attention": True}})
        return out, step_s, list(passes), await stream

    out, step_s, job_passes, (msgs, times) = worker.submit(scenario()).result(600)
    assert msgs[-1]["type"] == "done" and len(msgs[-1]["text"].split()) >= 10
    partials = [(m, t) for m, t in zip(msgs, times) if m["type"] == "transcription" and not m["is_final"]]
    assert len(partials) >= 5, "the stream got (almost) no results"
    assert all("lag" in m for m in msgs if m["type"] == "transcription")
    behind = max(t - m["end"] for m, t in partials)  # arrival minus the time its audio was sent
    bound = max(0.5, 10 * step_s)
    assert behind < bound, f"the stream fell {behind:.2f} s behind real time (bound {bound:.2f} s, step {step_s:.3f} s)"
    held = sum(seconds for _, seconds in job_passes)  # one uncut pass of the job would stall the stream this long
    assert held > 2 * bound, f"the job held the model {held:.2f} s in all: too short to stall the stream"
    starved = sum(demand for demand, _ in job_passes)
    assert starved <= 1, f"{starved} of {len(job_passes)} batch passes took the model while the stream's step waited"
    assert "error" not in out and out["chunks"] > 1, out.get("chunks")  # it ran in windows
    assert jiwer.wer(" ".join(text for _, text in clips[:4] * 2 * 15), out["text"]) <= MAX_WER


def test_metrics_endpoint_counts_jobs_errors_and_sessions(worker, clips):
    worker.run_jobs([job(clips[0][0]), {"audio_base64": "%%% not base64 %%%"}])
    port = worker.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("asr_requests_total", (("kind", "batch"), ("outcome", "ok")))] >= 1
    assert samples[("asr_errors_total", (("code", "invalid_input"),))] >= 1
    assert samples[("asr_audio_seconds_total", (("kind", "batch"),))] > 0
    assert ("asr_active_sessions", ()) in samples and ("asr_drains_total", ()) in samples
    assert any(name == "asr_stream_step_seconds_count" for name, _ in samples)


def test_structured_logs_name_the_job_but_never_its_text(worker, clips, caplog):
    with caplog.at_level(logging.INFO, logger="asr.events"):
        out = worker.run_jobs([job(clips[0][0]), {"audio_url": "file:///etc/passwd"}])
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "asr.events"]
    jobs = {x["id"]: x for x in lines if x["event"] == "job"}
    assert jobs["job-0"]["outcome"] == "ok" and jobs["job-0"]["audio_s"] > 0 and jobs["job-0"]["seconds"] > 0
    assert jobs["job-1"]["outcome"] == errors.FORBIDDEN_URL
    text = " ".join(r.getMessage() for r in caplog.records)
    assert out[0]["text"] and out[0]["text"] not in text


def test_settings_for_fairness_and_drain_are_read_from_the_environment():
    s = Settings.from_env(
        {"DRAIN_TIMEOUT_S": "12", "LIVE_BATCH_PASS_S": "0.2", "LIVE_MIN_WINDOW_S": "8", "MEMORY_HIGH_WATER": "0.7"}
    )
    assert (s.drain_timeout_s, s.live_batch_pass_s, s.live_min_window_s, s.memory_high_water) == (12, 0.2, 8, 0.7)
    assert dataclasses.replace(s, drain_timeout_s=1).drain_timeout_s == 1
