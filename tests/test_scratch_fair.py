import asyncio, time, threading
import numpy as np
from tests.test_faults import worker, clips, download_server, files, _stream, job  # noqa: F401


def test_measure(worker, clips, monkeypatch):
    engine = worker.engine
    passes = []
    real = engine._model_pass

    def timed(m, batch, length, *rest):
        t0 = time.monotonic()
        out = real(m, batch, length, *rest)
        passes.append((t0, time.monotonic() - t0, batch.shape[1] / 16000))
        return out

    monkeypatch.setattr(engine, "_model_pass", timed)
    speech = np.concatenate([np.concatenate([a, np.zeros(4800, np.float32)]) for a, _ in clips[:4]] * 2)
    long_audio = np.tile(speech, 5)

    async def scenario():
        stream = asyncio.ensure_future(_stream(worker.url, speech))
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        out = await worker.handler({"id": "long", "input": job(long_audio)})
        return out, time.monotonic() - t0, await stream

    dec = worker.server.decoder
    s0, n0 = (dec.step_seconds, dec.steps) if dec else (0, 0)
    out, job_s, (msgs, times) = worker.submit(scenario()).result(600)
    dec = worker.server.decoder
    tr = [(m, t) for m, t in zip(msgs, times) if m["type"] == "transcription"]
    gaps = np.diff([0.0] + [t for _, t in tr])
    lat = [t - m["end"] for m, t in tr if not m["is_final"]]
    print("\nRESULT job_s %.2f chunks %s len_s %.1f speech_s %.1f" % (job_s, out.get("chunks"), len(long_audio)/16000, len(speech)/16000))
    print("RESULT gaps max %.2f lat max %.2f lag max %.2f nmsg %d" % (gaps.max(), max(lat), max(m["lag"] for m, _ in tr), len(tr)))
    print("RESULT steps %d mean step %.3f" % (dec.steps - n0, (dec.step_seconds - s0) / max(1, dec.steps - n0)))
    print("RESULT passes", [(round(d, 2), round(a, 1)) for _, d, a in passes])
