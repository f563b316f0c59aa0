import asyncio, contextlib, time, os
import numpy as np
import pytest
import rp_handler
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.runtime.scheduling import BATCH, STREAM
from tests.helpers import WorkerThread
from tests.test_faults import clips, _stream, job  # noqa: F401

TARGET = float(os.environ.get("T", "0.2"))
MINW = float(os.environ.get("MINW", "2"))
REPS = int(os.environ.get("REPS", "15"))


@pytest.fixture(scope="module")
def worker(tiny_model):
    settings = Settings(
        model="tiny",
        max_batch_size=8,
        max_batch_wait_ms=100,
        warmup=False,
        ws_idle_timeout_s=30.0,
        live_batch_pass_s=TARGET,
        live_min_window_s=MINW,
    )
    saved = rp_handler.SETTINGS
    rp_handler.SETTINGS = settings
    w = WorkerThread(Engine(settings, model=tiny_model))
    yield w
    w.stop()
    rp_handler.SETTINGS = saved


def test_measure(worker, clips, monkeypatch):
    engine = worker.engine
    gate = engine.lock
    real_hold = gate.hold
    rec = []

    @contextlib.contextmanager
    def hold(priority=BATCH):
        t0 = time.monotonic()
        with real_hold(priority):
            t1 = time.monotonic()
            try:
                yield
            finally:
                rec.append((priority, t0, t1 - t0, time.monotonic() - t1))

    monkeypatch.setattr(gate, "hold", hold)
    speech = np.concatenate([np.concatenate([a, np.zeros(4800, np.float32)]) for a, _ in clips[:4]] * 2)
    long_audio = np.tile(speech, REPS)
    # learn the rate first
    worker.run_jobs([job(speech)])

    async def scenario():
        stream = asyncio.ensure_future(_stream(worker.url, speech))
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        out = await worker.handler({"id": "long", "input": job(long_audio)})
        return out, t0, time.monotonic(), await stream

    rec.clear()
    out, j0, j1, (msgs, times) = worker.submit(scenario()).result(600)
    tr = [(m, t) for m, t in zip(msgs, times) if m["type"] == "transcription"]
    gaps = np.diff([0.0] + [t for _, t in tr])
    lat = [t - m["end"] for m, t in tr if not m["is_final"]]
    sw = [w for p, t, w, h in rec if p == STREAM and j0 <= t <= j1]
    sh = [h for p, t, w, h in rec if p == STREAM]
    bh = [h for p, t, w, h in rec if p == BATCH and j0 <= t <= j1]
    print("\nRESULT job_s %.2f chunks %s len_s %.1f" % (j1 - j0, out.get("chunks"), len(long_audio) / 16000))
    print("RESULT gaps max %.2f lat max %.2f nmsg %d" % (gaps.max(), max(lat), len(tr)))
    print(
        "RESULT stream waits n=%d max %.3f p90 %.3f med %.3f; step med %.3f max %.3f"
        % (len(sw), max(sw), np.percentile(sw, 90), np.median(sw), np.median(sh), max(sh))
    )
    print("RESULT batch passes n=%d med %.3f max %.3f" % (len(bh), np.median(bh), max(bh)))
