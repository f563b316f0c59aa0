"""The other dialects under hostile input, in the drain and in the metrics: each bad input gets
that dialect's own error shape and the connection or request fails alone; a drain ends every
dialect's stream with its last results; metrics are labelled by dialect. Raw frames here (the
official clients cannot send malformed ones); tests/test_dialects.py drives the clients."""

import asyncio
import json
import time
import urllib.request

import aiohttp
import numpy as np
import pytest

from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.serving.openai.realtime_config import RealtimeError, TranscriptionConfig, parse_session
from tests.helpers import WorkerThread, requires_model

pytestmark = requires_model


@pytest.fixture(scope="module")
def worker(tiny_model):
    w = WorkerThread(Engine(Settings(model="tiny", warmup=False), model=tiny_model), http_api=True)
    w.base = f"http://127.0.0.1:{w.port}"
    yield w
    w.stop()


async def _socket(url, frames, until, timeout=30, then_closed=False):
    """Send ``frames`` (str: text, bytes: binary), then read JSON messages until ``until`` accepts
    one (``then_closed``: and on until the server closes); (messages, close code)."""
    got = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for f in frames:
            await (ws.send_str(f) if isinstance(f, str) else ws.send_bytes(f))
        async with asyncio.timeout(timeout):
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                got.append(json.loads(msg.data))
                if until(got[-1]) and not then_closed:
                    break
        return got, ws.close_code


def refused_upgrade(url: str) -> urllib.error.HTTPError:
    """A WebSocket upgrade request the server must refuse before upgrading: its HTTP error."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
    return err.value


def test_deepgram_live_bad_messages_get_error_messages_and_the_socket_stays_usable(worker):
    ws = worker.base.replace("http", "ws") + "/v1/listen?encoding=linear16&sample_rate=16000"
    frames = [
        "{not json",
        json.dumps({"type": "Nonsense"}),
        json.dumps({"type": "Configure", "keyterms": "x"}),
        json.dumps([1, 2]),
        json.dumps({"type": "CloseStream"}),
    ]
    got, code = asyncio.run(_socket(ws, frames, lambda m: m["type"] == "Metadata", then_closed=True))
    kinds = [m["type"] for m in got]
    assert kinds == ["Error", "Error", "ConfigureFailure", "Error", "Metadata"], got
    assert code == 1000
    assert all(m["type"] in {"Error", "ConfigureFailure", "Metadata"} for m in got)  # types the SDK knows


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("encoding=mulaw", "encoding"),
        ("channels=2", "mono"),
        ("sample_rate=4000", "sample_rate"),
        ("interim_results=maybe", "interim_results"),
        ("endpointing=-5", "endpointing"),
        ("utterance_end_ms=10", "utterance_end_ms"),
        ("keyterm=" + "x" * 60, "50"),
    ],
)
def test_deepgram_live_bad_parameters_are_refused_before_the_upgrade(worker, query, fragment):
    err = refused_upgrade(f"{worker.base}/v1/listen?{query}")
    body = json.loads(err.read())
    assert err.code == 400 and body["err_code"] == "Bad Request" and fragment in body["err_msg"]


def test_deepgram_prerecorded_refuses_what_is_not_audio_in_its_own_shape(worker):
    def post(data, content_type="application/octet-stream"):
        req = urllib.request.Request(f"{worker.base}/v1/listen", data=data, headers={"Content-Type": content_type})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        return err.value.code, json.loads(err.value.read())

    for data, ctype in [
        (b"%PDF-1.7 not audio", "audio/wav"),
        (b"", "audio/wav"),
        (b"{", "application/json"),
        (json.dumps({"url": 5}).encode(), "application/json"),
        (json.dumps({"url": "file:///etc/passwd"}).encode(), "application/json"),
    ]:
        status, body = post(data, ctype)
        assert status == 400 and set(body) == {"err_code", "err_msg", "request_id"}, (data, body)


def test_realtime_bad_events_get_openai_error_events_and_the_session_goes_on(worker):
    ws = worker.base.replace("http", "ws") + "/v1/realtime?intent=transcription"
    frames = [
        json.dumps({"type": "input_audio_buffer.append", "audio": "***not base64***"}),
        json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": [1]}}),
        json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"rate": 11025}}}}}),
        json.dumps({"type": "response.create"}),
        "\x00" * 10,
        b"\x01\x02",
        json.dumps({"type": "input_audio_buffer.clear", "event_id": "mine"}),
    ]
    got, _ = asyncio.run(_socket(ws, frames, lambda m: m["type"] == "input_audio_buffer.cleared"))
    assert got[0]["type"] == "session.created"
    errors = [m for m in got if m["type"] == "error"]
    assert len(errors) == 6, got
    assert all(set(m["error"]) >= {"type", "code", "message", "param"} for m in errors)
    assert got[-1]["type"] == "input_audio_buffer.cleared"


def test_realtime_refuses_other_intents_before_the_upgrade(worker):
    err = refused_upgrade(f"{worker.base}/v1/realtime?intent=conversation")
    assert err.code == 400 and "transcription" in json.loads(err.read())["error"]["message"]


@pytest.mark.parametrize(
    "session",
    [
        None,
        5,
        "x",
        [],
        {"audio": 1},
        {"audio": {"input": 1}},
        {"audio": {"input": {"format": "pcmu"}}},
        {"audio": {"input": {"format": {"type": "audio/pcm", "rate": True}}}},
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 1e9}}}},
        {"audio": {"input": {"turn_detection": "server_vad"}}},
        {"audio": {"input": {"transcription": {"keywords": "kubernetes"}}}},
        {"audio": {"input": {"transcription": {"prompt": ["x"]}}}},
        {"type": "realtime"},
    ],
)
def test_realtime_session_parsing_refuses_every_malformed_value_with_its_own_error(session):
    with pytest.raises(RealtimeError):
        if session is None:  # None is "no change" only for nested fields; a missing session object is refused
            parse_session("not an object", "session.update", TranscriptionConfig())
        else:
            parse_session(session, "session.update", TranscriptionConfig())


def test_a_drain_ends_every_dialects_stream_with_its_last_results(worker, tiny_model):
    """Deepgram gets its last Results and Metadata, then 1001; the product protocol its done."""
    w = WorkerThread(Engine(Settings(model="tiny", warmup=False), model=tiny_model))
    try:
        audio = (np.sin(np.linspace(0, 3000, 16000 * 2)) * 0.01 * 32767).astype("<i2").tobytes()
        url = f"ws://127.0.0.1:{w.port}/v1/listen?encoding=linear16&sample_rate=16000"

        async def run():
            async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
                await ws.send_bytes(audio)
                # the worker has the stream once its session is registered
                while not w.call(lambda: len(w.server.sessions)):
                    await asyncio.sleep(0.01)
                drain = asyncio.wrap_future(w.submit(w.server.drain(10.0)))
                got = [json.loads(m.data) async for m in ws if m.type == aiohttp.WSMsgType.TEXT]
                await drain
                return got, ws.close_code

        got, code = asyncio.run(asyncio.wait_for(run(), 60))
        assert got[-1]["type"] == "Metadata" and got[-1]["duration"] == pytest.approx(2.0, abs=0.05)
        assert code == 1001
    finally:
        w.stop()


def test_a_drain_with_the_server_far_behind_gives_every_dialect_its_last_results_before_1001(tiny_model, monkeypatch):
    """The server is behind real time when the drain begins (every streaming step slowed past
    real time), so no stream can be decoded to its end within the budget. Each is cut off with
    what it has heard, in its own dialect, before the 1001: the product protocol a final and
    ``done`` with ``truncated``; Deepgram a final Results and Metadata; OpenAI realtime the item
    it was speaking completed."""
    import base64
    import random
    import threading

    from nemo.collections.asr.inference.pipelines import buffered_rnnt_pipeline as bp

    from tools.test_model import synth

    slow = threading.Event()
    real_step = bp.BufferedRNNTPipeline.transcribe_step

    def step(self, frames):
        if slow.is_set():
            time.sleep(1.5)  # a step of 0.48 s of audio: 3x slower than real time
        return real_step(self, frames)

    monkeypatch.setattr(bp.BufferedRNNTPipeline, "transcribe_step", step)
    rng = random.Random(21)
    first = synth.synthesize("good morning teacher please open window today", "en", "en-us", rng, augment=False)
    second = synth.synthesize("seven yellow birds sing in the green river", "en", "en-us", rng, augment=False)
    pcm = [(u.audio * 32767).astype("<i2").tobytes() for u in (first, second)]
    pcm[1] += pcm[0]  # seconds more than the slowed server can decode within the drain
    w = WorkerThread(Engine(Settings(model="tiny", warmup=False), model=tiny_model), http_api=True)
    base = f"ws://127.0.0.1:{w.port}"
    heard = {k: asyncio.Event() for k in ("product", "deepgram", "realtime")}  # a first partial
    midway = {k: asyncio.Event() for k in heard}  # behind now, and partway into an utterance

    def realtime_midway(got) -> bool:
        done = {m["item_id"] for m in got if m["type"].endswith(".completed")}
        return got[-1]["type"].endswith(".delta") and got[-1]["item_id"] not in done

    def b64(chunk: bytes) -> str:
        return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})

    dialects = {
        "product": (
            base + "/",
            [json.dumps({"action": "start", "sample_rate": 16000})],
            lambda b: b,
            lambda m: m.get("type") == "transcription" and m["text"],
            lambda got: got[-1].get("type") == "transcription" and not got[-1]["is_final"] and got[-1]["text"],
        ),
        "deepgram": (
            base + "/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true",
            [],
            lambda b: b,
            lambda m: m.get("type") == "Results" and m["channel"]["alternatives"][0]["transcript"],
            lambda got: (
                got[-1].get("type") == "Results"
                and not got[-1]["is_final"]
                and got[-1]["channel"]["alternatives"][0]["transcript"]
            ),
        ),
        "realtime": (
            base + "/v1/realtime?intent=transcription",
            [
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "type": "transcription",
                            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
                        },
                    }
                )
            ],
            b64,
            lambda m: m.get("type") == "conversation.item.input_audio_transcription.delta",
            realtime_midway,
        ),
    }

    async def client(http, name, second_sent):
        url, opening, wrap, hears, is_midway = dialects[name]
        got = []
        async with http.ws_connect(url) as ws:
            for f in opening:
                await ws.send_str(f)

            async def send(audio: bytes):
                for k in range(0, len(audio), 6400):
                    frame = wrap(audio[k : k + 6400])
                    await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))

            async def receive():
                async for m in ws:
                    if m.type != aiohttp.WSMsgType.TEXT:
                        break
                    got.append(json.loads(m.data))
                    if hears(got[-1]):
                        heard[name].set()
                    if second_sent.is_set() and not midway[name].is_set() and is_midway(got):
                        midway[name].set()

            reading = asyncio.ensure_future(receive())
            await send(pcm[0])
            await second_sent.wait()  # the server is slow now: this audio is a backlog
            await send(pcm[1])
            await reading
        return got, ws.close_code

    async def run():
        second_sent = asyncio.Event()
        async with aiohttp.ClientSession() as http:
            clients = [asyncio.ensure_future(client(http, n, second_sent)) for n in dialects]
            for e in heard.values():
                await e.wait()
            slow.set()
            second_sent.set()
            for e in midway.values():
                await e.wait()
            await asyncio.wrap_future(w.submit(w.server.drain(3.0)))
            return dict(zip(dialects, await asyncio.gather(*clients)))

    try:
        results = asyncio.run(asyncio.wait_for(run(), 90))
    finally:
        slow.clear()
        w.stop()
    for name, (got, code) in results.items():
        assert code == 1001, (name, got[-3:])
    got = results["product"][0]
    assert got[-1]["type"] == "done" and got[-1].get("truncated") is True, got[-3:]
    assert got[-2]["type"] == "transcription" and got[-2]["is_final"] and got[-2]["text"], got[-3:]
    got = results["deepgram"][0]
    assert got[-1]["type"] == "Metadata", got[-3:]
    finals = [m for m in got if m.get("type") == "Results" and m["is_final"]]
    assert finals and finals[-1]["channel"]["alternatives"][0]["transcript"], got[-4:]
    got = results["realtime"][0]
    spoken = {m["item_id"] for m in got if m["type"].endswith(".delta")}
    completed = {m["item_id"]: m["transcript"] for m in got if m["type"].endswith(".completed")}
    assert spoken and spoken <= set(completed) and all(completed.values()), got[-4:]


def test_metrics_count_sessions_and_requests_by_dialect(worker):
    ws = worker.base.replace("http", "ws")
    asyncio.run(_socket(ws + "/v1/listen", [json.dumps({"type": "CloseStream"})], lambda m: m["type"] == "Metadata"))
    asyncio.run(_socket(ws + "/v1/realtime", [], lambda m: m["type"] == "session.created"))
    text = urllib.request.urlopen(f"{worker.base}/metrics", timeout=10).read().decode()
    for kind in ("deepgram_live", "openai_realtime"):
        assert any(line.startswith(f'asr_requests_total{{kind="{kind}"') for line in text.splitlines()), kind
        assert f'asr_sessions{{dialect="{kind}"}}' in text


def test_a_malformed_wav_header_is_an_error_message_not_a_dropped_socket(worker):
    import struct

    truncated = b"RIFF\x00\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00"  # fmt cut after 2 of its 16 bytes
    no_fmt = b"RIFF\x00\x00\x00\x00WAVEdata\x00\x00\x00\x00"
    stereo = b"RIFF\x00\x00\x00\x00WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 2, 16000, 64000, 4, 16)
    ws = worker.base.replace("http", "ws") + "/v1/listen"
    frames = [truncated, no_fmt, stereo, json.dumps({"type": "CloseStream"})]
    got, code = asyncio.run(_socket(ws, frames, lambda m: m["type"] == "Metadata", then_closed=True))
    assert [m["type"] for m in got] == ["Error", "Error", "Error", "Metadata"], got
    assert code == 1000


def test_realtime_without_turn_detection_bounds_what_it_holds_before_a_commit(worker):
    import base64

    chunk = base64.b64encode(b"\x00\x00" * 8000 * 40).decode()  # 40 s at 8 kHz per append
    update = {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}, "turn_detection": None}},
        },
    }
    frames = [json.dumps(update)] + [json.dumps({"type": "input_audio_buffer.append", "audio": chunk})] * 8
    ws = worker.base.replace("http", "ws") + "/v1/realtime?intent=transcription"
    got, _ = asyncio.run(_socket(ws, frames, lambda m: m["type"] == "error"))
    assert got[-1]["error"]["code"] == "input_audio_buffer_full", got[-1]  # the 8th append: 320 s > 300 s


def test_finalize_storms_are_bounded_and_answered(worker):
    """Finalize with nothing new heard opens no decoder stream (Deepgram still answers each at
    once); with audio between them, at most a few streams of one connection finish at a time."""
    ws = worker.base.replace("http", "ws") + "/v1/listen?encoding=linear16&sample_rate=16000"
    storm = [json.dumps({"type": "Finalize"})] * 200 + [json.dumps({"type": "CloseStream"})]
    got, code = asyncio.run(
        _socket(ws, [b"\x00\x00" * 1600] + storm, lambda m: m["type"] == "Metadata", then_closed=True)
    )
    finals = [m for m in got if m["type"] == "Results" and m["from_finalize"]]
    assert len(finals) == 200 and got[-1]["type"] == "Metadata" and code == 1000
    interleaved = [f for _ in range(100) for f in (b"\x00\x00" * 160, json.dumps({"type": "Finalize"}))]
    seen = []

    async def watch():
        task = asyncio.ensure_future(
            _socket(ws, interleaved + storm[-1:], lambda m: m["type"] == "Metadata", then_closed=True)
        )
        while not task.done():
            seen.append(worker.call(lambda: len(worker.server.decoder.streams)))
            await asyncio.sleep(0.01)
        return await task

    got, code = asyncio.run(watch())
    assert code == 1000 and max(seen) <= 5, max(seen)  # MAX_FINALIZING finishing + the current one
    deadline = time.monotonic() + 10  # the server's clean-up follows the close it sent
    while worker.call(lambda: (len(worker.server.sessions), len(worker.server.decoder.streams))) != (0, 0):
        assert time.monotonic() < deadline, "the session or its streams were not freed"
        time.sleep(0.02)


def test_realtime_commit_with_nothing_heard_is_answered_with_an_error(worker):
    ws = worker.base.replace("http", "ws") + "/v1/realtime?intent=transcription"
    got, _ = asyncio.run(
        _socket(ws, [json.dumps({"type": "input_audio_buffer.commit"})], lambda m: m["type"] == "error")
    )
    assert got[-1]["error"]["code"] == "input_audio_buffer_commit_empty"
