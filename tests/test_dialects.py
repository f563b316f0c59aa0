"""The dialects other clients already speak, driven by their official packages against a real
worker on loopback (the tiny model): OpenAI (file streaming, models, realtime transcription) with
``openai``, Deepgram (live and prerecorded) with ``deepgram-sdk``. Same engine, same streaming
decoder, same WER bounds as the product's own routes."""

import asyncio
import base64
import io
import random
import threading
import wave

import jiwer
import numpy as np
import pytest
import soxr

from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from tests.helpers import WorkerThread, requires_model
from tools.test_model import synth

pytestmark = requires_model
KEY = "dialect-key"
SENTENCES = ["green river open window", "seven yellow birds sing today", "please open the door now"]
MAX_WER = 0.15  # the streaming routes' bound on these clean sentences (tests/test_streaming.py: 4% on 20)


@pytest.fixture(scope="module")
def speech():
    rng = random.Random(5)
    utts = [synth.synthesize(t, "en", "en-us", rng, augment=False) for t in SENTENCES]
    gap = np.zeros(16000, np.float32)
    audio = np.concatenate([x for u in utts for x in (u.audio, gap)])
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return {"audio": audio, "pcm": pcm, "wav": buf.getvalue(), "text": " ".join(SENTENCES)}


@pytest.fixture(scope="module")
def worker(tiny_model):
    settings = Settings(model="tests/assets/tiny_parakeet.nemo", warmup=False, auth_token=KEY)
    w = WorkerThread(Engine(settings, model=tiny_model), http_api=True)
    w.base = f"http://127.0.0.1:{w.port}"
    yield w
    w.stop()


def openai_client(w, key=KEY):
    import openai

    return openai.OpenAI(base_url=w.base + "/v1", api_key=key, max_retries=0)


def deepgram_client(w, key=KEY):
    from deepgram import DeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    ws = w.base.replace("http://", "ws://")
    env = DeepgramClientEnvironment(base=w.base, production=ws, agent=ws, agent_rest=w.base)
    return DeepgramClient(api_key=key, environment=env)


def wer(ref, hyp):
    return jiwer.wer(ref.lower(), hyp.lower().replace(".", "").replace(",", ""))


# ---- OpenAI
def test_openai_file_streaming_deltas_arrive_while_the_file_is_decoded_and_concatenate_to_the_text(worker, speech):
    client = openai_client(worker)
    deltas, done, open_at_first_delta = [], None, None
    with client.audio.transcriptions.with_streaming_response.create(
        file=("talk.wav", speech["wav"]), model="gpt-4o-transcribe", stream=True
    ) as response:
        assert response.headers["openai-model"] == "tiny_parakeet"  # the real model, whatever was asked
        for event in response.parse():
            if event.type == "transcript.text.delta":
                if open_at_first_delta is None:  # is the file still being decoded? (the worker's own state)
                    open_at_first_delta = worker.call(lambda: len(worker.server.decoder.streams))
                deltas.append(event.delta)
            elif event.type == "transcript.text.done":
                done = event
    assert open_at_first_delta == 1, "the first delta came only after the whole file was decoded"
    assert len(deltas) >= 3 and "".join(deltas) == done.text
    assert wer(speech["text"], done.text) <= MAX_WER, done.text
    assert done.usage.seconds == pytest.approx(len(speech["audio"]) / 16000, abs=1)


def test_openai_streaming_refuses_subtitle_formats_and_the_file_route_names_the_real_model(worker, speech):
    import openai

    client = openai_client(worker)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.audio.transcriptions.create(
            file=("a.wav", speech["wav"]), model="whisper-1", stream=True, response_format="srt"
        )
    raw = client.audio.transcriptions.with_raw_response.create(file=("a.wav", speech["wav"]), model="whisper-1")
    assert raw.headers["openai-model"] == "tiny_parakeet" and wer(speech["text"], raw.parse().text) <= MAX_WER


def test_openai_models_list_and_retrieve(worker):
    import openai

    client = openai_client(worker)
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny_parakeet"]
    assert client.models.retrieve("tiny_parakeet").owned_by
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o-transcribe")


def _realtime(worker, audio, turn_detection, commits: bool, key=KEY, until_completed=3, probe=False):
    """Stream ``audio`` (16 kHz, sent at 24 kHz) through the official client's realtime
    connection; every event up to the ``until_completed``-th completed item."""
    import openai

    a24 = soxr.resample(audio, 16000, 24000).astype(np.float32)
    pcm24 = (np.clip(a24, -1, 1) * 32767).astype("<i2").tobytes()

    async def run():
        client = openai.AsyncOpenAI(api_key=key, base_url=worker.base + "/v1", max_retries=0)
        events = []
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            session = {
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                        "turn_detection": turn_detection,
                    }
                },
            }
            await conn.session.update(session=session)
            for i in range(0, len(pcm24), 4800):
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i : i + 4800]).decode())
            if probe:  # an event answered with an error: everything the server sent before it has arrived
                await conn.send({"type": "probe.event"})
                async for ev in conn:
                    events.append(ev)
                    if ev.type == "error":
                        break
            if commits:
                await conn.input_audio_buffer.commit()
            done = 0
            async for ev in conn:
                events.append(ev)
                if ev.type == "conversation.item.input_audio_transcription.completed":
                    done += 1
                    if done == until_completed:
                        break
        return events

    return asyncio.run(asyncio.wait_for(run(), 120))


def test_openai_realtime_with_server_vad_gives_deltas_then_one_completed_item_per_utterance(worker, speech):
    events = _realtime(worker, speech["audio"], {"type": "server_vad", "silence_duration_ms": 500}, commits=False)
    types = [e.type for e in events]
    assert types[:2] == ["session.created", "session.updated"]
    assert events[1].session.audio.input.transcription.model == "tiny_parakeet"
    items = {}
    for e in events[2:]:
        if getattr(e, "item_id", None):
            items.setdefault(e.item_id, []).append(e)
    assert len(items) == 3
    transcripts = []
    for evs in items.values():
        kinds = [e.type for e in evs]
        assert kinds[0] == "input_audio_buffer.speech_started" and kinds[-1].endswith("transcription.completed")
        assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("input_audio_buffer.committed")
        deltas = [e.delta for e in evs if e.type.endswith("transcription.delta")]
        assert deltas and "".join(deltas) == evs[-1].transcript
        transcripts.append(evs[-1].transcript)
    assert wer(speech["text"], " ".join(transcripts)) <= MAX_WER, transcripts


def test_openai_realtime_without_turn_detection_transcribes_nothing_before_the_commit(worker, speech):
    events = _realtime(worker, speech["audio"], None, commits=True, until_completed=1, probe=True)
    before = [e.type for e in events[: [e.type for e in events].index("error") + 1]]
    assert before == ["session.created", "session.updated", "error"], before  # nothing but the probe's error
    after = events[len(before) :]
    assert after[0].type == "input_audio_buffer.committed"
    deltas = [e.delta for e in after if e.type.endswith("transcription.delta")]
    completed = after[-1]
    assert completed.type.endswith("transcription.completed") and "".join(deltas) == completed.transcript
    assert wer(speech["text"], completed.transcript) <= MAX_WER, completed.transcript


# ---- Deepgram
def _live(worker, pcm, *, key=KEY, controls=(), finalize_after=None, **options):
    """Stream ``pcm`` through the official SDK's live socket; every message it parsed."""
    from deepgram.core.events import EventType

    got, done = [], threading.Event()
    client = deepgram_client(worker, key)
    with client.listen.v1.connect(
        model="nova-3", language="en", encoding="linear16", sample_rate=16000, channels=1, **options
    ) as sock:
        sock.on(EventType.MESSAGE, got.append)
        sock.on(EventType.CLOSE, lambda *_: done.set())
        listener = threading.Thread(target=sock.start_listening, daemon=True)
        listener.start()
        for i in range(0, len(pcm), 3200):
            sock.send_media(pcm[i : i + 3200])
        for control in controls:
            getattr(sock, control)()
        sock.send_close_stream()
        assert done.wait(60), "the socket did not close after CloseStream"
        listener.join(10)
    assert None not in got, "the SDK received a message type it does not know"
    return got


def test_deepgram_live_interim_and_final_results_speech_final_utterance_end_and_metadata(worker, speech):
    msgs = _live(
        worker,
        speech["pcm"],
        interim_results=True,
        utterance_end_ms=1000,
        endpointing=300,
        punctuate=True,
        smart_format=True,
    )
    results = [m for m in msgs if m.type == "Results"]
    finals = [m for m in results if m.is_final]
    assert any(not m.is_final and m.channel.alternatives[0].transcript for m in results), "no interim results"
    assert sum(m.speech_final for m in finals) >= 2
    ends = [m for m in msgs if m.type == "UtteranceEnd"]
    assert len(ends) >= 2
    assert msgs[-1].type == "Metadata" and msgs[-1].duration == pytest.approx(len(speech["audio"]) / 16000, abs=0.05)
    text = " ".join(m.channel.alternatives[0].transcript for m in finals if m.channel.alternatives[0].transcript)
    assert wer(speech["text"], text) <= MAX_WER, text
    # word times: seconds from the start of the stream, increasing across utterances
    words = [w for m in finals for w in m.channel.alternatives[0].words]
    starts = [w.start for w in words]
    assert starts == sorted(starts) and starts[-1] > 5.0
    assert all(w.punctuated_word and w.word == w.word.lower() for w in words)
    assert results[0].metadata.model_info.name == "tiny_parakeet"


def test_deepgram_finalize_gives_a_prompt_final_result(worker, speech):
    first = synth.synthesize(SENTENCES[0], "en", "en-us", random.Random(9), augment=False).audio
    pcm = (first * 32767).astype("<i2").tobytes()  # no silence after the speech: only Finalize ends it
    msgs = _live(worker, pcm, controls=("send_finalize",), interim_results=False)
    finals = [m for m in msgs if m.type == "Results" and m.is_final]
    forced = [m for m in finals if m.from_finalize]
    assert forced, [m.channel.alternatives[0].transcript for m in finals]
    heard = " ".join(m.channel.alternatives[0].transcript for m in finals)
    assert wer(SENTENCES[0], heard) <= 0.25, heard


def test_deepgram_keepalive_keeps_an_idle_socket_open(tiny_model, speech):
    settings = Settings(model="tiny", warmup=False, ws_idle_timeout_s=1.5, ws_start_timeout_s=1.5)
    w = WorkerThread(Engine(settings, model=tiny_model), http_api=False)
    w.base = f"http://127.0.0.1:{w.port}"
    try:
        from deepgram.core.events import EventType

        got, closed = [], threading.Event()
        with deepgram_client(w, "any").listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate=16000
        ) as sock:
            sock.on(EventType.MESSAGE, got.append)
            sock.on(EventType.CLOSE, lambda *_: closed.set())
            threading.Thread(target=sock.start_listening, daemon=True).start()
            for _ in range(8):  # 2.4 s of silence from the client, past the 1.5 s idle limit
                assert not closed.wait(0.3)
                sock.send_keep_alive()
            sock.send_media(speech["pcm"][: 16000 * 2 * 2])
            sock.send_close_stream()
            assert closed.wait(60)
        assert got[-1].type == "Metadata" and got[-1].duration == pytest.approx(2.0, abs=0.05)
    finally:
        w.stop()


def test_deepgram_prerecorded_returns_words_with_timestamps(worker, speech):
    response = deepgram_client(worker).listen.v1.media.transcribe_file(
        request=speech["wav"], model="nova-3", smart_format=True, keyterm=["window"]
    )
    alt = response.results.channels[0].alternatives[0]
    assert wer(speech["text"], alt.transcript) <= MAX_WER, alt.transcript
    assert len(alt.words) == len(alt.transcript.split())
    assert all(0 <= w.start <= w.end <= response.metadata.duration for w in alt.words)
    assert [w.start for w in alt.words] == sorted(w.start for w in alt.words)
    assert list(response.metadata.model_info.values())[0]["name"] == "tiny_parakeet"


def test_deepgram_prerecorded_url_goes_through_the_url_policy(worker):
    from deepgram.core.api_error import ApiError

    with pytest.raises(ApiError) as err:  # a loopback address: refused before any connection
        deepgram_client(worker).listen.v1.media.transcribe_url(url=f"{worker.base}/ping", model="nova-3")
    assert err.value.status_code == 400 and "public" in str(err.value.body)


# ---- wrong keys, each dialect's way
def test_wrong_keys_are_refused_in_each_dialects_way(worker, speech):
    import openai
    from deepgram.core.api_error import ApiError

    with pytest.raises(openai.AuthenticationError):
        openai_client(worker, "wrong").audio.transcriptions.create(file=("a.wav", speech["wav"]), model="x")
    with pytest.raises(openai.AuthenticationError):
        openai_client(worker, "wrong").models.list()
    with pytest.raises(Exception) as err:  # the handshake itself is refused (HTTP 401)
        _realtime(worker, speech["audio"][:1600], None, commits=False, key="wrong", until_completed=0)
    assert "401" in str(err.value)
    with pytest.raises(ApiError) as err:
        deepgram_client(worker, "wrong").listen.v1.media.transcribe_file(request=speech["wav"])
    assert err.value.status_code == 401 and err.value.body["err_code"] == "INVALID_AUTH"
    with pytest.raises(Exception) as err:
        _live(worker, b"", key="wrong")
    assert "401" in str(err.value) or "credentials" in str(err.value).lower()
