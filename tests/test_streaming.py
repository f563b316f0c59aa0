"""The real-time WebSocket server on a loopback port with the tiny model: protocol, endpointing,
batching across sessions, isolation, limits and cleanup. Loopback traffic only."""

import asyncio
import dataclasses
import json
import random
import threading
import urllib.request

import jiwer
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from client import ASRWebSocketClient
from client import pcm16_bytes as pcm16
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.serving.asr_server import ASRServer
from parakeet_worker.serving.live import PcmInput
from tools.test_model import synth

# Measured on the test model: v1, 30 fresh sentences (bench/stream_accuracy.py), streaming 3.6%
# WER vs reference, 3.1% vs the offline transcript of the same audio; on this test's 20 sentences
# v3 (issue 15) 1.2% and 1.2%, v4 1.2% and 0.6% (the bounds were 8% for v1, 5% for v3).
STREAM_MAX_WER = 0.04
STREAM_VS_OFFLINE_MAX_WER = 0.04
# A session that starts at the first sample of speech (8 streams): issue 15's targets. The v1 test
# model missed them (first word 1/8, WER 17.4%); v2 and v3 meet them (7/8, 4.3%), v4 (8/8, 4.3%).
MIDSPEECH_MIN_FIRST_WORDS = 7
MIDSPEECH_MAX_WER = 0.08


class ServerThread:
    """An ASRServer on 127.0.0.1:<free port>, run by its own event loop in a thread (``http_api``:
    also the page and the OpenAI route, as in the load-balancer server)."""

    def __init__(self, settings, engine, http_api=False):
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.settings, self.engine, self.http_api = settings, engine, http_api
        threading.Thread(target=self._run, daemon=True).start()
        assert self.ready.wait(60)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self.ready.set()
        self.loop.run_forever()

    async def _start(self):
        self.server = ASRServer(self.settings, self.engine)
        self.listener = await self.server.serve("127.0.0.1", 0, http_api=self.http_api)
        self.port = self.listener.port
        self.url = f"ws://127.0.0.1:{self.port}"

    def call(self, fn):
        """Run ``fn()`` on the server's loop (to read its state without racing it)."""
        return asyncio.run_coroutine_threadsafe(self._call(fn), self.loop).result(10)

    @staticmethod
    async def _call(fn):
        return fn()

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(10)
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(Settings(model="tiny", max_batch_size=8, warmup=False), model=tiny_model)


@pytest.fixture(scope="module")
def server(engine):
    s = ServerThread(dataclasses.replace(engine.settings, ws_max_sessions=12, ws_idle_timeout_s=30.0), engine)
    yield s
    s.stop()


def two_utterances(seed=7001, pause=1.5):
    rng = random.Random(seed)
    a = synth.synthesize("green river open window", "en", "en-us", rng, augment=False)
    b = synth.synthesize("seven yellow birds sing today", "en", "en-us", rng, augment=False)
    gap = np.zeros(int(pause * 16000), np.float32)
    return np.concatenate([a.audio, gap, b.audio]), [a.text, b.text]


async def stream(url, audio, *, rate=16000, frame_s=0.1, realtime=False, chunk_duration=0.0, token=None):
    """Stream ``audio`` (at ``rate``) and return (all messages, done message)."""
    msgs = []
    async with ASRWebSocketClient(url, token) as c:
        await c.start(sample_rate=rate, chunk_duration=chunk_duration)
        step = int(rate * frame_s)

        async def send():
            for i in range(0, len(audio), step):
                await c.send_audio(pcm16(audio[i : i + step]))
                await asyncio.sleep(frame_s if realtime else 0)
            await c.stop()

        sender = asyncio.create_task(send())
        async for m in c:
            msgs.append(m)
        await sender
    return msgs, msgs[-1]


def finals(msgs):
    return [m for m in msgs if m["type"] == "transcription" and m["is_final"]]


def test_two_utterances_give_two_finals_partials_first_and_done_is_their_concatenation(server, engine):
    audio, refs = two_utterances()
    msgs, done = asyncio.run(stream(server.url, audio, realtime=True))
    assert done["type"] == "done"
    assert done["duration"] == pytest.approx(len(audio) / 16000, abs=0.01)
    fin = finals(msgs)
    assert len(fin) == 2, [m["text"] for m in fin]
    partial_idx = [i for i, m in enumerate(msgs) if m["type"] == "transcription" and not m["is_final"]]
    assert partial_idx and partial_idx[0] < msgs.index(fin[0]), "a partial comes before the first final"
    assert " ".join(m["text"] for m in fin) == done["text"]
    # (accuracy is measured below on more audio; the tiny model never heard a long pause inside an
    # utterance, so this is a loose bound)
    assert jiwer.wer(" ".join(refs), done["text"]) <= 0.3, done["text"]
    # word timestamps: seconds from the stream start, in order, inside the audio; the second
    # utterance starts after the pause
    words = [w for m in fin for w in m["words"]]
    assert [w["word"] for w in words] == done["text"].split()
    assert all(0 <= w["start"] <= w["end"] <= done["duration"] + 0.1 for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert fin[1]["start"] >= fin[0]["end"] + 1.0


def test_streaming_accuracy_and_gap_to_offline(server, engine):
    utts = synth.make_utterances("en", synth.train_voices("en"), 14, 7011) + synth.make_utterances(
        "ru", synth.train_voices("ru"), 6, 7012
    )

    async def all_streams():
        return [(await stream(server.url, u.audio))[1]["text"] for u in utts]

    streamed = asyncio.run(all_streams())
    offline = [t.text for t in engine.transcribe_batch([u.audio for u in utts])]
    refs = [u.text for u in utts]
    print(f"streaming WER {jiwer.wer(refs, streamed):.3f}, vs offline {jiwer.wer(offline, streamed):.3f}")
    assert jiwer.wer(refs, streamed) <= STREAM_MAX_WER, list(zip(refs, streamed))
    assert jiwer.wer(offline, streamed) <= STREAM_VS_OFFLINE_MAX_WER


def test_session_joined_mid_speech_recognises_its_first_words(server):
    """The stream starts at the first sample of speech (a client that joins mid-speech, a VAD that
    cut the silence away) and ends right after the last: the first final still holds the first
    words. Two utterances per stream, a pause between them, no silence before the first."""
    pairs = synth.edge_pairs("en", synth.train_voices("en"), 10, 7031) + synth.edge_pairs(
        "ru", synth.train_voices("ru"), 6, 7032
    )
    gap = np.zeros(int(1.2 * 16000), np.float32)
    clips = [
        (np.concatenate([a.audio, gap, b.audio]), a.text, b.text) for (a, _), (b, _) in zip(pairs[0::2], pairs[1::2])
    ]

    async def all_streams():
        return [finals((await stream(server.url, audio))[0]) for audio, _, _ in clips]

    results = asyncio.run(all_streams())
    assert all(len(fin) == 2 for fin in results), [[m["text"] for m in fin] for fin in results]
    firsts = [fin[0]["text"] for fin in results]
    refs = [ref for _, ref, _ in clips]
    first_ok = sum(t.split()[:1] == r.split()[:1] for r, t in zip(refs, firsts))
    print(f"mid-speech start: first word {first_ok}/{len(refs)}, WER {jiwer.wer(refs, firsts):.3f}")
    assert first_ok >= MIDSPEECH_MIN_FIRST_WORDS, list(zip(refs, firsts))
    assert jiwer.wer(refs, firsts) <= MIDSPEECH_MAX_WER, list(zip(refs, firsts))
    assert all(fin[0]["words"][0]["start"] <= 0.3 for fin in results)  # the first word is at the start


@pytest.mark.parametrize("rate", [8000, 22050, 16000, 44100, 48000])
def test_pcm_input_in_odd_frames_equals_one_shot_resampling(rate):
    import soxr

    x = (np.random.default_rng(rate).standard_normal(rate * 2) * 3000).astype("<i2")
    raw = x.tobytes()
    pin = PcmInput(rate)
    parts = [pin.feed(raw[i : i + 3333]) for i in range(0, len(raw), 3333)]  # odd sizes split samples
    got = np.concatenate(parts + [pin.flush()])
    want = x.astype(np.float32) / 32768.0
    if rate != 16000:
        want = soxr.resample(want, rate, 16000)
    assert len(got) == len(want) and np.abs(got - want).max() < 1e-6


def test_sample_rates_other_than_16k_are_transcribed(server):
    import soxr

    utts = synth.make_utterances("en", ["en-us", "en-gb"], 4, 7002, augment=False)
    for rate in (8000, 44100):

        async def run(audio, rate=rate):
            raw = pcm16(soxr.resample(audio, 16000, rate).astype(np.float32))
            async with ASRWebSocketClient(server.url) as c:
                await c.start(sample_rate=rate)
                for i in range(0, len(raw), 3333):
                    await c.send_audio(raw[i : i + 3333])
                await c.stop()
                return [m async for m in c][-1]

        dones = [asyncio.run(run(u.audio)) for u in utts]
        for u, done in zip(utts, dones):
            assert done["duration"] == pytest.approx(len(u.audio) / 16000, abs=0.01)
        # 8 kHz audio has nothing above 4 kHz, which the tiny model never heard in training: it
        # measures ~38% WER there (the resampling itself is exact: the test above), so only a
        # loose bound for 8 kHz
        wer = jiwer.wer([u.text for u in utts], [d["text"] for d in dones])
        assert wer <= (0.5 if rate == 8000 else 0.1), (rate, [d["text"] for d in dones])


def test_eight_concurrent_sessions_get_only_their_own_text(server):
    utts = synth.make_utterances("en", ["en-us", "en-gb"], 8, seed=7003, augment=False)

    async def all_sessions():
        return await asyncio.gather(*(stream(server.url, u.audio, realtime=True, frame_s=0.2) for u in utts))

    steps_before = server.call(lambda: (server.server.decoder.steps, server.server.decoder.frames))
    results = asyncio.run(all_sessions())
    steps_after = server.call(lambda: (server.server.decoder.steps, server.server.decoder.frames))
    texts = [done["text"] for _, done in results]
    assert jiwer.wer([u.text for u in utts], texts) <= 0.15, texts
    for u, text in zip(utts, texts):
        own = jiwer.wer(u.text, text)
        assert own < min(jiwer.wer(v.text, text) for v in utts if v is not u), (u.text, text)
    steps = steps_after[0] - steps_before[0]
    frames = steps_after[1] - steps_before[1]
    assert frames / steps > 2.0, f"streams were not batched: {frames} frames in {steps} steps"


def test_a_batch_job_between_two_streams_changes_nothing(server, engine):
    audio, _ = two_utterances(seed=7004)
    first, _ = asyncio.run(stream(server.url, audio))
    engine.transcribe_batch([audio, audio[: len(audio) // 2]])
    engine.model.transcribe([audio], timestamps=False, verbose=False)  # NeMo's own: leaves train mode
    second, _ = asyncio.run(stream(server.url, audio))
    strip = lambda ms: [(m["type"], m.get("text"), m.get("is_final"), m.get("words")) for m in ms]  # noqa: E731
    assert strip(first) == strip(second)


def test_recoverable_errors_keep_the_connection(server):
    async def run():
        async with connect(server.url) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            codes = []
            for bad in (
                "not json",
                "[1, 2]",
                json.dumps({"action": "dance"}),
                json.dumps({"action": "start", "sample_rate": 4000}),
                json.dumps({"action": "start", "sample_rate": "fast"}),
                json.dumps({"action": "start", "bogus": 1}),
                json.dumps({"action": "stop"}),
            ):
                await ws.send(bad)
                codes.append(json.loads(await ws.recv()))
            await ws.send(b"\x00\x01" * 100)  # audio before start
            codes.append(json.loads(await ws.recv()))
            # still usable: a real session afterwards
            await ws.send(json.dumps({"action": "start"}))
            started = json.loads(await ws.recv())
            await ws.send(json.dumps({"action": "start"}))
            again = json.loads(await ws.recv())
            await ws.send(json.dumps({"action": "stop"}))
            done = json.loads(await ws.recv())
            return codes, started, again, done

    codes, started, again, done = asyncio.run(run())
    assert all(c["type"] == "error" and c["message"] for c in codes)
    assert [c["code"] for c in codes] == [
        "invalid_json",
        "invalid_json",
        "unknown_action",
        "invalid_sample_rate",
        "invalid_sample_rate",
        "invalid_input",
        "not_started",
        "not_started",
    ]
    assert started["type"] == "started" and again["code"] == "already_started"
    assert done == {"type": "done", "text": "", "duration": 0.0}


def test_restart_after_stop_on_the_same_connection(server):
    audio, refs = two_utterances(seed=7005, pause=0.3)

    async def run():
        out = []
        async with ASRWebSocketClient(server.url) as c:
            for _ in range(2):
                await c.start()
                await c.send_audio(pcm16(audio))
                await c.stop()
                out.append([m async for m in c][-1])
        return out

    a, b = asyncio.run(run())
    assert a["text"] == b["text"] and jiwer.wer(" ".join(refs), a["text"]) <= 0.25


def test_disconnect_mid_stream_frees_the_session(server):
    audio, _ = two_utterances(seed=7006)

    async def run():
        async with ASRWebSocketClient(server.url) as c:
            await c.start()
            await c.send_audio(pcm16(audio[: len(audio) // 2]))
            await asyncio.sleep(0.5)
        # closed without stop

    asyncio.run(run())

    def state():
        d = server.server.decoder
        pipeline = d.pipeline
        return len(server.server.sessions), len(d.streams), len(pipeline._state_pool), len(pipeline.bufferer.bufferers)

    def settled():  # the server notices the closed socket a moment after the client
        for _ in range(100):
            if server.call(state) == (0, 0, 0, 0):
                return True
            asyncio.run(asyncio.sleep(0.05))
        return False

    assert settled(), server.call(state)
    # and it stays that way when other sessions come and go
    asyncio.run(stream(server.url, audio[:8000]))
    assert settled(), server.call(state)


def test_ping_is_200_when_warm(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/ping", timeout=5) as r:
        assert r.status == 200


def test_auth_capacity_and_idle_timeout(engine):
    s = dataclasses.replace(
        engine.settings,
        auth_token="s3cret",
        ws_max_sessions=1,
        ws_idle_timeout_s=1.0,
        ws_max_message_bytes=64 * 1024,
    )
    srv = ServerThread(s, engine)
    try:

        async def slot_free():
            """The one session slot is free again: the server has dropped the previous session
            (it notices the closed socket a moment after the client). Polled, with a deadline."""
            deadline = asyncio.get_running_loop().time() + 10
            while await asyncio.to_thread(srv.call, lambda: len(srv.server.sessions)):
                assert asyncio.get_running_loop().time() < deadline, "the closed session still holds the slot"
                await asyncio.sleep(0.01)

        async def run():
            with pytest.raises(InvalidStatus) as no_token:
                async with connect(srv.url):
                    pass
            with pytest.raises(InvalidStatus):
                async with connect(srv.url + "/?token=wrong"):
                    pass
            # either credential may match (a proxy may put its own in the header)
            async with connect(srv.url + "/?token=s3cret", additional_headers={"Authorization": "Bearer proxy"}) as ws:
                assert json.loads(await ws.recv())["type"] == "welcome"
            await slot_free()
            async with connect(srv.url + "/?token=s3cret") as first:
                assert json.loads(await first.recv())["type"] == "welcome"
                # over capacity: refused with 1013 and a reason
                async with connect(srv.url, additional_headers={"Authorization": "Bearer s3cret"}) as second:
                    with pytest.raises(ConnectionClosed) as full:
                        await second.recv()
                # the first one idles out with a clear error
                msg = json.loads(await asyncio.wait_for(first.recv(), 5))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(first.recv(), 5)
            # a message over WS_MAX_MESSAGE_BYTES closes the connection with 1009
            await slot_free()
            async with connect(srv.url + "/?token=s3cret") as big:
                await big.recv()
                await big.send(json.dumps({"action": "start"}))
                await big.recv()
                await big.send(b"\0" * (128 * 1024))
                with pytest.raises(ConnectionClosed) as too_big:
                    while True:
                        await big.recv()
            return no_token.value.response.status_code, full.value.rcvd, msg, too_big.value.rcvd

        status, close, idle, big_close = asyncio.run(run())
        assert big_close.code == 1009
        assert status == 401
        assert close.code == 1013 and "capacity" in close.reason
        assert idle["type"] == "error" and idle["code"] == "idle_timeout"
    finally:
        srv.stop()


def test_keepalive_pings_do_not_keep_an_idle_session_open(engine, monkeypatch):
    """Pings keep a connection alive through proxies, but only messages count as activity: a
    session that answers pings and sends nothing still idles out."""
    import aiohttp

    from parakeet_worker.serving import connection

    monkeypatch.setattr(connection, "PING_INTERVAL_S", 0.2)
    srv = ServerThread(dataclasses.replace(engine.settings, ws_idle_timeout_s=1.5), engine)
    try:

        async def run():
            pings, texts = 0, []
            async with aiohttp.ClientSession() as s, s.ws_connect(srv.url, autoping=False) as ws:
                t0 = asyncio.get_running_loop().time()
                while asyncio.get_running_loop().time() - t0 < 8:
                    msg = await asyncio.wait_for(ws.receive(), 10)
                    if msg.type == aiohttp.WSMsgType.PING:
                        pings += 1
                        await ws.pong(msg.data)  # a live client answers every ping
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        texts.append(json.loads(msg.data))
                    else:
                        break
                return pings, texts, asyncio.get_running_loop().time() - t0

        pings, texts, waited = asyncio.run(run())
        assert pings >= 3, pings
        assert [m["type"] for m in texts] == ["welcome", "error"] and texts[1]["code"] == "idle_timeout"
        assert waited < 5
    finally:
        srv.stop()


def test_ping_is_204_and_connections_refused_while_the_model_loads(engine):
    srv = ServerThread(engine.settings, None)  # no engine attached yet: still loading
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/ping", timeout=5) as r:
            assert r.status == 204

        async def run():
            async with connect(srv.url) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
            return closed.value.rcvd

        close = asyncio.run(run())
        assert close.code == 1013 and "loading" in close.reason
    finally:
        srv.stop()


def test_load_balancer_mode_serves_ping_and_streams(tmp_path):
    """WORKER_MODE=load_balancer: rp_handler.py runs only the WebSocket server on PORT, with
    GET /ping on PORT_HEALTH (204 while loading, 200 when warm)."""
    import os
    import subprocess
    import sys
    import time
    import urllib.error

    from tests.helpers import ROOT, TINY_MODEL, free_port

    port, health = free_port(), free_port()
    env = {
        **os.environ,
        "WORKER_MODE": "load_balancer",
        "PORT": str(port),
        "PORT_HEALTH": str(health),
        "WS_HOST": "127.0.0.1",
        "PARAKEET_MODEL": str(TINY_MODEL),
        "DEVICE": "cpu",
    }
    env.pop("WS_PORT", None)
    log = open(tmp_path / "lb.log", "w")
    proc = subprocess.Popen([sys.executable, "rp_handler.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        codes = []
        deadline = time.time() + 120
        while time.time() < deadline and 200 not in codes:
            assert proc.poll() is None, (tmp_path / "lb.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/ping", timeout=2) as r:
                    codes.append(r.status)
            except (urllib.error.URLError, OSError):  # not listening yet, or slow to answer (busy CPU)
                pass
            time.sleep(0.2)
        assert codes and codes[-1] == 200 and set(codes) <= {200, 204}, codes
        audio, refs = two_utterances(seed=7021, pause=0.3)
        _, done = asyncio.run(stream(f"ws://127.0.0.1:{port}", audio))
        assert jiwer.wer(" ".join(refs), done["text"]) <= 0.3, done
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_start_takes_hotwords_for_its_stream_and_refuses_invalid_ones(server):
    audio, refs = two_utterances()

    async def run():
        async with connect(server.url) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            for bad in (
                {"hotwords": "river"},
                {"hotwords": ["<b>"]},
                {"hotwords": ["ok"] * 101},
                {"hotwords": ["x" * 51]},
                {"hotwords": ["river"], "hotword_boost": 9},
            ):
                await ws.send(json.dumps({"action": "start", **bad}))
                msg = json.loads(await ws.recv())
                assert (msg["type"], msg["code"]) == ("error", "invalid_input"), (bad, msg)
            # still usable: a stream with hotwords ("River" is the same hotword as "river")
            await ws.send(
                json.dumps({"action": "start", "hotwords": ["river", "River", "yellow birds"], "hotword_boost": 2})
            )
            started = json.loads(await ws.recv())
            assert (started["type"], started["hotwords"]) == ("started", 2)
            for i in range(0, len(audio), 3200):
                await ws.send(pcm16(audio[i : i + 3200]))
            await ws.send(json.dumps({"action": "stop"}))
            while (msg := json.loads(await ws.recv()))["type"] != "done":
                pass
            return msg

    done = asyncio.run(run())
    # two utterances with a pause, as the other tests' 0.3 bound; one more word for the boost: v2 of
    # the test model turns the boosted "yellow birds" into "yellowsth" (a partial match winning)
    print("boosted stream:", done["text"])
    assert jiwer.wer(" ".join(refs), done["text"]) <= 0.34, done["text"]
    assert server.call(lambda: server.server.decoder.boosted) == 0  # the stream's tree left with it
