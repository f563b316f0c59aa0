"""``stream=true`` on the OpenAI file route: server-sent events as the streaming decoder hears the
file - ``transcript.text.delta`` (append-only: the deltas concatenate to the final text) and one
``transcript.text.done`` with the text and the audio's duration as usage. The file goes through
the same batched streaming decoder as live streams (serving/live.py), faster than real time, so
the first words arrive long before the file is done. A failure after the headers are sent comes
as an ``{"error": ...}`` event, which the official client raises.
"""

from __future__ import annotations

import asyncio
import json
import math

import numpy as np
from aiohttp import web

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.errors import INTERNAL_ERROR, ASRError
from parakeet_worker.runtime import metrics
from parakeet_worker.serving.live import AppendOnly, LiveAudio
from parakeet_worker.serving.openai.request import TranscriptionRequest

FEED_S = 2.0  # seconds of the file handed to the decoder at a time (its backlog stays bounded)


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


async def stream_transcription(
    request: web.Request, server, samples: np.ndarray, req: TranscriptionRequest
) -> web.StreamResponse:
    engine = server.engine
    boosting = await engine.boosting(req.hotwords)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "openai-model": engine.model_name}
    )
    await response.prepare(request)
    try:  # after the headers: nothing to leak if they fail
        live = LiveAudio(server.decoder, SAMPLE_RATE, boosting)
    except ASRError as exc:  # the decoder cannot take streams any more (a lost GPU)
        await response.write(_event({"error": {"message": exc.message, "type": "server_error", "code": exc.code}}))
        return response
    text = AppendOnly()
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()

    async def feed():  # the decoder's backlog for this file stays bounded (LiveAudio.wait_for_room)
        step = int(FEED_S * SAMPLE_RATE) * 2
        for i in range(0, len(pcm), step):
            live.push(pcm[i : i + step])
            await live.wait_for_room()
        live.finish()

    feeder = asyncio.create_task(feed())
    try:
        async for up in live.updates():
            if up.error:
                metrics.error(INTERNAL_ERROR)
                error = {"message": up.error, "type": "server_error", "code": INTERNAL_ERROR}
                await response.write(_event({"error": error}))
                return response
            delta = text.final(up.final) if up.final is not None else text.partial(up.partial)
            if delta:
                await response.write(_event({"type": "transcript.text.delta", "delta": delta}))
        usage = {"type": "duration", "seconds": math.ceil(len(samples) / SAMPLE_RATE)}
        await response.write(_event({"type": "transcript.text.done", "text": text.text, "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
    finally:
        feeder.cancel()
        live.abort()  # a client gone mid-stream: the decoder drops the rest at once
    await response.write_eof()
    return response
