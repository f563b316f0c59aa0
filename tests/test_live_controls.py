"""The product protocol's live controls on the tiny model: finalize (what was heard becomes final
now, the stream goes on, times continue), keepalive (an idle socket stays open), configure
(hotwords, partial interval, latency mid-stream) and the per-session latency setting."""

import asyncio
import dataclasses
import json
import random

import jiwer
import numpy as np
import pytest

from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from tests.helpers import WorkerThread, requires_model
from tools.test_model import synth

pytestmark = requires_model


@pytest.fixture(scope="module")
def worker(tiny_model):
    settings = Settings(model="tiny", warmup=False, ws_idle_timeout_s=1.5, ws_start_timeout_s=1.5)
    w = WorkerThread(Engine(settings, model=tiny_model))
    yield w
    w.stop()


def speech(text: str, seed: int) -> np.ndarray:
    return synth.synthesize(text, "en", "en-us", random.Random(seed), augment=False).audio


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


class Client:
    """A raw protocol client: JSON messages and binary audio, messages read one by one."""

    def __init__(self, ws):
        self.ws = ws

    async def send(self, **msg):
        await self.ws.send(json.dumps(msg))

    async def audio(self, samples: np.ndarray, frame_s: float = 0.1):
        step = int(16000 * frame_s)
        for i in range(0, len(samples), step):
            await self.ws.send(pcm16(samples[i : i + step]))

    async def until(self, predicate, timeout: float = 60.0) -> list[dict]:
        """Messages up to and including the first one ``predicate`` accepts."""
        got = []
        async with asyncio.timeout(timeout):
            while True:
                m = json.loads(await self.ws.recv())
                got.append(m)
                if predicate(m):
                    return got


async def session(url, fn):
    from websockets.asyncio.client import connect

    async with connect(url) as ws:
        c = Client(ws)
        await c.until(lambda m: m["type"] == "welcome")
        return await fn(c)


def is_final(m):
    return m["type"] == "transcription" and m["is_final"]


def test_finalize_makes_what_was_heard_final_now_and_the_stream_goes_on(worker):
    first, second = speech("green river open window", 8101), speech("seven yellow birds sing today", 8102)

    async def run(c):
        await c.send(action="start", partial_interval=0)
        await c.audio(first)  # no silence after it: only finalize can end this utterance now
        await c.send(action="finalize")
        forced = (await c.until(is_final))[-1]
        await c.audio(second)
        await c.send(action="stop")
        rest = await c.until(lambda m: m["type"] == "done")
        return forced, rest

    forced, rest = asyncio.run(session(worker.url, run))
    assert forced.get("from_finalize") is True
    assert jiwer.wer("green river open window", forced["text"]) <= 0.25, forced["text"]
    done = rest[-1]
    later = [m for m in rest if is_final(m)]
    assert later and not any(m.get("from_finalize") for m in later)
    assert done["text"] == " ".join([forced["text"]] + [m["text"] for m in later])
    assert jiwer.wer("green river open window seven yellow birds sing today", done["text"]) <= 0.25
    # one time line: the second utterance's words come after the first one's audio
    first_s = len(first) / 16000
    assert all(w["start"] >= first_s - 0.1 for m in later for w in m["words"]), later
    assert done["duration"] == pytest.approx((len(first) + len(second)) / 16000, abs=0.05)


def test_keepalive_keeps_an_idle_session_open_and_without_it_it_closes(worker):
    from websockets.exceptions import ConnectionClosed

    async def kept(c):
        await c.send(action="start")
        for _ in range(8):  # 2.4 s without audio, past the 1.5 s idle limit
            await asyncio.sleep(0.3)
            await c.send(action="keepalive")
        await c.send(action="stop")
        return (await c.until(lambda m: m["type"] in ("done", "error")))[-1]

    assert asyncio.run(session(worker.url, kept))["type"] == "done"

    async def idle(c):
        await c.send(action="start")
        try:
            return await c.until(lambda m: m["type"] == "error", timeout=10)
        except ConnectionClosed:
            return None

    msgs = asyncio.run(session(worker.url, idle))
    assert msgs and msgs[-1]["code"] == "idle_timeout"


def test_configure_changes_the_partial_interval_hotwords_and_latency_mid_stream(worker):
    async def run(c):
        await c.send(action="start", partial_interval=5)
        await c.audio(speech("green river", 8103))
        await c.send(action="configure", partial_interval=0.5, hotwords=["kubernetes", "grafana"], latency="low")
        configured = (await c.until(lambda m: m["type"] in ("configured", "error")))[-1]
        await c.send(action="configure", latency="fast")
        refused = (await c.until(lambda m: m["type"] == "error"))[-1]
        await c.send(action="stop")
        done = (await c.until(lambda m: m["type"] == "done"))[-1]
        return configured, refused, done

    configured, refused, done = asyncio.run(session(worker.url, run))
    assert configured == {"type": "configured", "partial_interval": 0.5, "latency": "low", "hotwords": 2}
    assert refused["code"] == "invalid_input" and "latency" in refused["message"]
    assert jiwer.wer("green river", done["text"]) <= 0.5, done["text"]


def test_latency_sets_the_silence_that_ends_an_utterance(worker):
    """Two sentences with the synthesizer's own ~0.6 s pause between them: ``low`` (0.4 s of
    silence ends an utterance) gives two finals, ``balanced`` (the server's 0.8 s) and
    ``accurate`` (1.6 s) one."""
    audio = np.concatenate([speech("green river open window", 8104), speech("seven yellow birds", 8105)])

    def finals_with(latency):
        async def run(c):
            await c.send(action="start", latency=latency)
            started = (await c.until(lambda m: m["type"] == "started"))[-1]
            assert started["latency"] == latency
            await c.audio(audio)
            await c.send(action="stop")
            return [m for m in await c.until(lambda m: m["type"] == "done") if is_final(m)]

        return asyncio.run(session(worker.url, run))

    assert [len(finals_with(x)) for x in ("low", "balanced", "accurate")] == [2, 1, 1]


def test_finalize_and_configure_before_start_are_refused(worker):
    async def run(c):
        out = []
        for action in ("finalize", "configure"):
            await c.send(action=action)
            out.append((await c.until(lambda m: m["type"] == "error"))[-1]["code"])
        return out

    assert asyncio.run(session(worker.url, run)) == ["not_started", "not_started"]


def test_settings_are_unchanged_by_these_tests(worker):
    assert dataclasses.asdict(worker.settings)["stream_eou_ms"] == Settings().stream_eou_ms
