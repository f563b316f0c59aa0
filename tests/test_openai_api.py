"""POST /v1/audio/transcriptions with the official ``openai`` client against the real worker in
load-balancer mode (tiny model, loopback only): every response_format, word and segment
timestamps, and the errors the client turns into its own exceptions."""

import asyncio
import dataclasses
import re
import urllib.request

import aiohttp
import jiwer
import numpy as np
import openai
import pytest
from aiohttp.test_utils import TestClient, TestServer

from parakeet_worker.config.settings import Settings
from parakeet_worker.serving.asr_server import ASRServer
from parakeet_worker.serving.http_server import build_app
from parakeet_worker.serving.openai.request import LANGUAGES, parse_fields
from tests.helpers import LB_MAX_BYTES, SAMPLE_TEXT, write_wav
from tools.test_model import synth

MAX_WER = 0.15  # the batch tests' bound for this sentence (tests/test_batch_worker.py)


@pytest.fixture(scope="module")
def client(lb_worker):
    url, token = lb_worker
    return openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0, timeout=120)


def transcribe(client, path, **kw):
    with open(path, "rb") as f:
        return client.audio.transcriptions.create(model="parakeet-tdt-0.6b-v3", file=f, **kw)


def cues(text, sep):
    pattern = rf"(\d\d):(\d\d):(\d\d){sep}(\d\d\d) --> (\d\d):(\d\d):(\d\d){sep}(\d\d\d)\n(.+)"
    out = []
    for m in re.finditer(pattern, text):
        g = [int(x) for x in m.groups()[:8]]
        out.append(
            (g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000, m.group(9))
        )
    return out


@pytest.mark.parametrize("fmt", ["mp3", "flac", "webm"])
def test_json_is_the_default_and_transcribes_any_format(client, speech_files, fmt):
    result = transcribe(client, speech_files[fmt])
    assert jiwer.wer(SAMPLE_TEXT, result.text) <= MAX_WER, result.text
    assert result.usage.type == "duration" and result.usage.seconds >= 3


def test_text_srt_and_vtt(client, speech_files):
    path = speech_files["wav"]
    text = transcribe(client, path, response_format="text")
    assert isinstance(text, str) and text.endswith("\n")
    assert jiwer.wer(SAMPLE_TEXT, text.strip()) <= MAX_WER, text
    srt = transcribe(client, path, response_format="srt")
    vtt = transcribe(client, path, response_format="vtt")
    assert srt.startswith("1\n") and vtt.startswith("WEBVTT\n")
    for subtitles, sep in ((srt, ","), (vtt, r"\.")):
        parsed = cues(subtitles, sep)
        assert parsed and " ".join(c[2] for c in parsed) == text.strip()
        assert all(0 <= start < end <= 4.5 for start, end, _ in parsed)


def test_verbose_json_with_word_and_segment_timestamps(client, speech_files):
    r = transcribe(
        client,
        speech_files["flac"],
        response_format="verbose_json",
        language="en",
        timestamp_granularities=["word", "segment"],
        prompt="ignored",
        temperature=0.2,
    )
    assert jiwer.wer(SAMPLE_TEXT, r.text) <= MAX_WER, r.text
    assert r.language == "english" and r.duration == pytest.approx(3.1, abs=1.0)
    assert [w.word for w in r.words] == r.text.split()
    assert all(0 <= w.start <= w.end <= r.duration for w in r.words)
    assert [w.start for w in r.words] == sorted(w.start for w in r.words)
    assert " ".join(s.text for s in r.segments) == r.text
    assert [s.id for s in r.segments] == list(range(len(r.segments)))
    assert r.segments[0].start <= r.words[0].start and r.words[-1].end <= r.segments[-1].end
    assert all(s.avg_logprob <= 0 and s.temperature == 0 for s in r.segments)


def test_verbose_json_granularities_follow_openai(client, speech_files):
    default = transcribe(client, speech_files["mp3"], response_format="verbose_json")
    assert default.segments and getattr(default, "words", None) is None and default.language == "unknown"
    words_only = transcribe(
        client, speech_files["mp3"], response_format="verbose_json", timestamp_granularities=["word"]
    )
    assert words_only.words and getattr(words_only, "segments", None) is None
    # OpenAI takes timestamp granularities only with verbose_json
    with pytest.raises(openai.BadRequestError) as e:
        transcribe(client, speech_files["mp3"], response_format="json", timestamp_granularities=["word"])
    assert e.value.body["param"] == "timestamp_granularities[]"


@pytest.mark.parametrize(
    "kw,param",
    [
        ({"language": "zh"}, "language"),
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": 3}, "temperature"),
        ({"extra_body": {"diarize": "true"}}, "diarize"),
    ],
)
def test_invalid_fields_are_bad_requests(client, speech_files, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        transcribe(client, speech_files["mp3"], **kw)
    assert e.value.status_code == 400 and e.value.body["param"] == param
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["message"]


def test_a_non_audio_file_is_a_bad_request(client, tmp_path):
    page = tmp_path / "notes.html"
    page.write_text("<!doctype html><html><body>not audio</body></html>")
    with pytest.raises(openai.BadRequestError) as e:
        transcribe(client, page)
    assert e.value.body["code"] == "unsupported_format" and e.value.body["param"] == "file"


def test_a_wrong_key_is_an_authentication_error(lb_worker, speech_files):
    url, _ = lb_worker
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        transcribe(wrong, speech_files["mp3"])
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"


def test_a_file_over_the_limit_is_413_and_the_worker_keeps_serving(client, speech_files, tmp_path):
    seconds = LB_MAX_BYTES / (48000 * 2 * 2) + 1  # 48 kHz stereo PCM16: just over the limit
    t = np.arange(int(seconds * 48000)) / 48000
    big = write_wav(tmp_path / "big.wav", np.stack([0.1 * np.sin(2 * np.pi * 220 * t)] * 2, axis=1), 48000)
    assert big.stat().st_size > LB_MAX_BYTES
    with pytest.raises(openai.APIStatusError) as e:
        transcribe(client, big)
    assert e.value.status_code == 413 and e.value.body["code"] == "audio_too_large"
    assert jiwer.wer(SAMPLE_TEXT, transcribe(client, speech_files["mp3"]).text) <= MAX_WER


def test_raw_http_errors_415_and_missing_key(lb_worker):
    url, token = lb_worker

    async def run():
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"{url}/v1/audio/transcriptions", json={"file": "x"}, headers={"Authorization": f"Bearer {token}"}
            ) as r:
                unsupported = r.status, (await r.json())["error"]
            async with s.post(f"{url}/v1/audio/transcriptions", data={"model": "x"}) as r:
                missing_key = r.status, (await r.json())["error"]
        return unsupported, missing_key

    (status, err), (status_401, err_401) = asyncio.run(run())
    assert status == 415 and err["type"] == "invalid_request_error" and set(err) == {"message", "type", "param", "code"}
    assert status_401 == 401 and err_401["code"] == "invalid_api_key"


def test_503_while_the_model_loads_or_the_server_drains():
    server = ASRServer(dataclasses.replace(Settings(), api_token="t"))  # no engine yet: loading

    async def run():
        async with TestClient(TestServer(build_app(server, http_api=True))) as c:
            form = aiohttp.FormData({"model": "x"})
            form.add_field("file", b"RIFF", filename="a.wav")
            loading = await c.post("/v1/audio/transcriptions", data=form, headers={"Authorization": "Bearer t"})
            ping_loading = (await c.get("/ping")).status
            server.draining = True
            form = aiohttp.FormData({"model": "x"})
            form.add_field("file", b"RIFF", filename="a.wav")
            draining = await c.post("/v1/audio/transcriptions", data=form, headers={"Authorization": "Bearer t"})
            return (
                loading.status,
                (await loading.json())["error"],
                ping_loading,
                draining.status,
                (await draining.json())["error"],
                (await c.get("/ping")).status,
            )

    status, err, ping_loading, status_drain, err_drain, ping_drain = asyncio.run(run())
    assert (status, err["code"], err["type"], ping_loading) == (503, "model_loading", "server_error", 204)
    assert (status_drain, err_drain["code"], ping_drain) == (503, "shutting_down", 503)


def test_field_rules_without_a_server():
    req = parse_fields(
        {
            "file": ["a.mp3"],
            "model": ["whisper-1"],
            "response_format": ["VERBOSE_JSON"],
            "timestamp_granularities[]": ["word", "segment", "word"],
            "language": ["DE"],
        }
    )
    assert (req.response_format, req.granularities, req.language) == ("verbose_json", ("word", "segment"), "de")
    assert parse_fields({"file": ["a"]}).granularities == ("segment",)
    assert len(LANGUAGES) == 25


def test_models_lists_the_served_model(client, lb_worker):
    listed = [m.id for m in client.models.list()]
    assert len(listed) == 1 and client.models.retrieve(listed[0]).id == listed[0]
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("whisper-1")
    assert e.value.body["code"] == "model_not_found"
    url, _ = lb_worker
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"hotwords": ["<b>"]}, "hotwords[]"),
        ({"hotwords": ["ok"] * 101}, "hotwords[]"),
        ({"hotwords": ["ok"], "hotword_boost": "9"}, "hotword_boost"),
        ({"hotwords": ["ok"], "hotword_boost": "x"}, "hotword_boost"),
    ],
)
def test_invalid_hotwords_are_bad_requests(client, speech_files, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        transcribe(client, speech_files["mp3"], extra_body=extra)
    assert e.value.body["param"] == param and e.value.body["code"] == "invalid_input"


def test_hotwords_reach_the_engine(client, tmp_path):
    """Our extension: ``hotwords[]`` (the client's ``extra_body={"hotwords": [...]}``) boosts the
    words the plain transcript missed, on fresh sentences in held-out voices."""
    utts = synth.make_utterances("en", synth.HELD_OUT["en"], 30, seed=1611)
    refs, plain, boosted = [], [], []
    for k, u in enumerate(utts):
        path = write_wav(tmp_path / f"u{k}.wav", u.audio, 16000)
        text = transcribe(client, path).text
        missed = sorted(set(u.text.split()) - set(text.split()))
        if missed:
            refs.append(u.text.strip())
            plain.append(text)
            boosted.append(transcribe(client, path, extra_body={"hotwords": missed, "hotword_boost": 2}).text)
    assert len(refs) >= 3, "the sample must hold enough errors to measure"
    assert jiwer.wer(refs, boosted) < 0.7 * jiwer.wer(refs, plain), list(zip(refs, plain, boosted))


def test_requests_are_counted_in_the_metrics(client, lb_worker, speech_files):
    url, _ = lb_worker

    def counts():
        body = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
        return {
            o: float(m.group(1))
            if (m := re.search(rf'asr_requests_total{{kind="openai",outcome="{o}"}} ([0-9.e+]+)', body))
            else 0.0
            for o in ("ok", "error")
        }

    before = counts()
    transcribe(client, speech_files["mp3"])
    with pytest.raises(openai.BadRequestError):
        transcribe(client, speech_files["mp3"], language="zh")
    after = counts()
    assert (after["ok"] - before["ok"], after["error"] - before["error"]) == (1, 1)


def test_a_drain_lets_a_request_in_flight_be_answered(tiny_model, speech_files):
    """SIGTERM while a transcription runs: new requests get 503, the running one its transcript,
    and the drain returns only after answering it."""
    from parakeet_worker.engine.engine import Engine

    settings = Settings(model="tiny", warmup=False)
    engine = Engine(settings, model=tiny_model)

    async def run():
        server = ASRServer(settings, engine)
        try:
            async with TestClient(TestServer(build_app(server, http_api=True))) as c:
                form = aiohttp.FormData({"model": "x"})
                form.add_field("file", speech_files["flac"].read_bytes(), filename="a.flac")
                request = asyncio.ensure_future(c.post("/v1/audio/transcriptions", data=form))
                for _ in range(6000):  # until the request is being served (at most 30 s)
                    if server.requests.count or request.done():
                        break
                    await asyncio.sleep(0.005)
                assert server.requests.count, "the request never started"
                await server.drain(60)
                in_flight_after_drain = server.requests.count
                late = aiohttp.FormData({"model": "x"})
                late.add_field("file", speech_files["flac"].read_bytes(), filename="a.flac")
                refused = await c.post("/v1/audio/transcriptions", data=late)
                response = await request
                return in_flight_after_drain, response.status, await response.json(), refused.status
        finally:
            await server.close()

    in_flight, status, body, refused = asyncio.run(run())
    assert in_flight == 0 and status == 200 and refused == 503
    assert jiwer.wer(SAMPLE_TEXT, body["text"]) <= MAX_WER, body


def test_audio_that_never_fits_in_gpu_memory_is_500_out_of_memory(tiny_model, speech_files, monkeypatch):
    """CUDA out of memory on every forward pass (injected into the encoder): the engine retries with
    local attention, then the route answers 500 ``out_of_memory``; the worker then keeps serving."""
    import torch

    from parakeet_worker.engine.engine import Engine

    settings = Settings(model="tiny", warmup=False)
    engine = Engine(settings, model=tiny_model)

    def out_of_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    async def run():
        server = ASRServer(settings, engine)
        try:
            async with TestClient(TestServer(build_app(server, http_api=True))) as c:

                async def post():
                    form = aiohttp.FormData({"model": "x"})
                    form.add_field("file", speech_files["flac"].read_bytes(), filename="a.flac")
                    r = await c.post("/v1/audio/transcriptions", data=form)
                    return r.status, await r.json()

                monkeypatch.setattr(tiny_model.encoder, "forward", out_of_memory)
                failed = await post()
                monkeypatch.undo()
                return failed, await post()
        finally:
            await server.close()

    (status, body), (status_after, body_after) = asyncio.run(run())
    assert status == 500 and body["error"]["code"] == "out_of_memory" and body["error"]["type"] == "server_error"
    assert engine.stats["oom_local"] == 1 and engine.stats["oom_failed"] == 1
    assert status_after == 200 and jiwer.wer(SAMPLE_TEXT, body_after["text"]) <= MAX_WER, body_after


def test_hostile_forms_are_refused_before_they_cost_memory(lb_worker, client, speech_files):
    """Text fields are read in chunks and capped together (64 KiB), parts are counted: a 1 MB field
    (inside the file-size limit, so not refused from Content-Length) and 600 parts get 400."""
    url, token = lb_worker
    headers = {"Authorization": f"Bearer {token}"}

    async def run():
        async with aiohttp.ClientSession() as s:
            big = aiohttp.FormData({"model": "x", "prompt": "a" * 1_000_000})
            big.add_field("file", b"RIFF", filename="a.wav")
            async with s.post(f"{url}/v1/audio/transcriptions", data=big, headers=headers) as r:
                long_field = r.status, (await r.json())["error"]
            many = aiohttp.FormData([("hotwords[]", "ok")] * 600)
            many.add_field("file", b"RIFF", filename="a.wav")
            async with s.post(f"{url}/v1/audio/transcriptions", data=many, headers=headers) as r:
                many_parts = r.status, (await r.json())["error"]
        return long_field, many_parts

    (status, err), (status_parts, err_parts) = asyncio.run(run())
    assert status == 400 and "longer than" in err["message"] and err["param"] == "prompt", err
    assert status_parts == 400 and "parts" in err_parts["message"], err_parts
    assert jiwer.wer(SAMPLE_TEXT, transcribe(client, speech_files["mp3"]).text) <= MAX_WER  # still serving
