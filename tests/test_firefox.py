"""The microphone page in Firefox (Debian's firefox-esr, headless, over WebDriver BiDi: tests/firefox.py).

Firefox cannot be asked for a 16 kHz AudioContext and has no fake-microphone-from-a-file switch, so
``getUserMedia`` is replaced, before the page's script runs, by a stream that plays the speech
from an AudioContext at the browser's own rate - the same path a real microphone takes into the
page: a MediaStream into the page's own context, its worklet resampling to 16 kHz, PCM16 over the
WebSocket. The checks are the Chromium test's (tests/page_checks.py)."""

import asyncio
import base64
import io
import time

import pytest
import soundfile as sf

from tests import firefox
from tests.page_checks import (
    PROBE_FREQS,
    RECORDER,
    WORKLET_PROBE,
    check_streamed_page,
    check_worklet,
    speech_with_pauses,
)
from tools.test_model import synth

# Runs before the page's script: the microphone plays window.__speechWav (base64 WAV, set by the
# test) once, in real time, at the AudioContext's default rate; window.__micRate tells that rate.
FAKE_MICROPHONE = (
    """() => {
  """
    + RECORDER
    + """
  window.__errors = [];
  window.addEventListener("error", (e) => window.__errors.push(String(e.message)));
  navigator.mediaDevices.getUserMedia = async () => {
    const bytes = Uint8Array.from(atob(window.__speechWav), (c) => c.charCodeAt(0));
    const ctx = new AudioContext();
    const buffer = await ctx.decodeAudioData(bytes.buffer);
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    const out = ctx.createMediaStreamDestination();
    source.connect(out);
    source.onended = () => { window.__micEnded = performance.now(); };
    source.start();
    window.__micRate = ctx.sampleRate;
    return out.stream;
  };
}"""
)


@pytest.fixture(scope="module")
def speech():
    audio, reference = speech_with_pauses()
    buf = io.BytesIO()
    sf.write(buf, audio, synth.SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode(), len(audio) / synth.SAMPLE_RATE, reference


def _text(id_: str) -> str:
    return f"document.getElementById('{id_}').textContent"


async def _stream_the_page(url: str, token: str, wav_b64: str, seconds: float) -> dict:
    async with firefox.Firefox() as ff:
        ctx = await ff.open(url + "/", before=FAKE_MICROPHONE)
        await ff.evaluate(
            ctx, f"(window.__speechWav = {wav_b64!r}, document.getElementById('token').value = {token!r}, true)"
        )
        await ff.click(ctx, "#start")

        async def wait_for(expression: str, timeout: float):
            deadline = time.time() + timeout
            while not await ff.evaluate(ctx, expression):
                assert time.time() < deadline, (
                    expression,
                    await ff.evaluate(ctx, _text("state")),
                    await ff.evaluate(ctx, _text("error")),
                )
                await asyncio.sleep(0.2)

        await wait_for(f"{_text('state')} === 'streaming'", 30)
        started = await ff.evaluate(ctx, "performance.now()")
        level = 0.0
        deadline = time.time() + seconds + 1.0
        while time.time() < deadline:
            level = max(level, await ff.evaluate(ctx, "parseFloat(document.getElementById('level').style.width) || 0"))
            await asyncio.sleep(0.2)
        await wait_for("window.__micEnded !== undefined", 30)
        out = {
            "finals_while_playing": await ff.evaluate(ctx, "document.querySelectorAll('#transcript span').length"),
            "started": started,
            "level": level,
            "mic_rate": await ff.evaluate(ctx, "window.__micRate"),
        }
        await ff.click(ctx, "#stop")
        await wait_for(f"{_text('state')} === 'done'", 60)
        for key, expression in (
            ("transcript", _text("transcript") + ".trim()"),
            ("latency", _text("latency")),
            ("log", "window.__log"),
            ("error_text", _text("error")),
            ("errors", "window.__errors"),
            ("agent", "navigator.userAgent"),
        ):
            out[key] = await ff.evaluate(ctx, expression)
        return out


def test_the_page_streams_the_microphone_in_firefox(lb_worker, speech):
    url, token = lb_worker
    wav_b64, seconds, reference = speech
    r = asyncio.run(_stream_the_page(url, token, wav_b64, seconds))
    print(r["agent"], "microphone context rate", r["mic_rate"])
    assert "Firefox/" in r["agent"] and r["mic_rate"] != 16000  # the worklet had to resample
    check_streamed_page(
        reference=reference,
        transcript=r["transcript"],
        log=r["log"],
        started=r["started"],
        finals_while_playing=r["finals_while_playing"],
        latency=r["latency"],
        errors=r["errors"],
        error_text=r["error_text"],
        level=r["level"],
    )


@pytest.mark.parametrize("rate", [48000, 44100])
def test_the_worklet_low_passes_and_resamples_to_16k_in_firefox(lb_worker, rate):
    url, _ = lb_worker

    async def probe():
        async with firefox.Firefox() as ff:
            ctx = await ff.open(url + "/")
            return await ff.evaluate(ctx, f"({WORKLET_PROBE})([{rate}, {PROBE_FREQS}])")

    result = asyncio.run(probe())
    print(rate, result)
    check_worklet(result)
