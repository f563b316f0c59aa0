"""Constants and small helpers the tests share (fixtures live in conftest.py)."""

import os
import socket
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from parakeet_worker.config.constants import SAMPLE_RATE
from tools.test_model import synth

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = Path(os.environ.get("TINY_MODEL_PATH", ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))

MISSING_MODEL = (
    f"the test model {TINY_MODEL} does not exist: build it with `python tools/test_model/build_tiny.py` "
    "(it writes tests/assets/tiny_parakeet.nemo), or set TINY_MODEL_PATH to an existing tiny model"
)


def require_model() -> None:
    """A missing test model is an error, never a skip: a wrong TINY_MODEL_PATH must not turn most
    of the suite into skips that look like a pass."""
    if not TINY_MODEL.is_file():
        pytest.fail(MISSING_MODEL, pytrace=False)


# tests that need the model; conftest.py fails them (not skips them) when it is missing
requires_model = pytest.mark.requires_model

FORMATS = synth.FORMATS  # every container/codec the product claims
SAMPLE_TEXT = "good morning teacher please open window today"
LB_MAX_BYTES = 2_000_000  # MAX_AUDIO_BYTES of the load-balancer worker fixture (conftest.lb_worker)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_wav(path, samples, rate=SAMPLE_RATE):
    sf.write(str(path), samples, rate, subtype="PCM_16")
    return path


def encode(src, dst, args):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)], check=True)
    return dst


class WorkerThread:
    """One worker's event loop in a thread, as in production: the WebSocket server (``url``) and
    the RunPod job handler (``run_jobs``) on the same loop and the same engine."""

    def __init__(self, engine, settings=None, http_api: bool = False):
        import asyncio
        import threading

        import rp_handler
        from parakeet_worker.serving.asr_server import ASRServer

        self.engine = engine
        self.settings = settings or engine.settings
        rp_handler._engine = engine  # the handler's one shared engine
        self.handler = rp_handler.handler
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            self.server = ASRServer(self.settings, engine)
            self.listener = await self.server.serve("127.0.0.1", 0, http_api=http_api)
            self.port = self.listener.port
            self.url = f"ws://127.0.0.1:{self.port}"

        def run():
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(120)

    def submit(self, coro):
        """Run a coroutine on the worker's loop; a concurrent.futures.Future."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn):
        """``fn()`` on the worker's loop (reads its state without racing it)."""

        async def wrap():
            return fn()

        return self.submit(wrap()).result(30)

    def run_jobs(self, inputs: list[dict], timeout: float = 300) -> list[dict]:
        """Run these job inputs concurrently through the handler; their outputs, in order."""
        import asyncio

        async def all_jobs():
            return await asyncio.gather(*(self.handler({"id": f"job-{i}", "input": x}) for i, x in enumerate(inputs)))

        return self.submit(all_jobs()).result(timeout)

    def stop(self):
        self.submit(self.server.close()).result(30)  # its listener too


def wav_b64(samples) -> str:
    """Float samples at 16 kHz as a base64 WAV file (a batch job's ``audio_base64``)."""
    import base64
    import io

    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()
