"""The microphone page in a real browser: Debian's headless Chromium, driven by Playwright, with a
48 kHz WAV of espeak-ng speech as its fake microphone, against the load-balancer worker (tiny
model, loopback only). The page's AudioWorklet resamples to 16 kHz and streams PCM16 over the
WebSocket on its own origin; partials must show while the speech plays, finals after each pause,
and the finals must match the spoken text.

Set SAVE_DEMO_SCREENSHOT=docs/img/demo_page.png to refresh the README's screenshot."""

import os
import random
import shutil
import time

import jiwer
import numpy as np
import pytest
import soxr
from playwright.sync_api import sync_playwright

import synth
from tests.helpers import write_wav

PAUSE_S = 1.5  # longer than STREAM_EOU_MS: each sentence gets its own final while the audio plays
# The same audio streamed by the Python client at 16 kHz, starting 0-200 ms into the file (the page
# starts wherever the fake microphone is when it opens): WER 3.8-11.5% on the tiny model, which
# often mishears the first word after a pause. Bound between the WebSocket tests' 8% (30 clips) and
# 30% (short clips with pauses).
MAX_WER = 0.2
CHROMIUM_ARGS = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--no-sandbox",
                 "--autoplay-policy=no-user-gesture-required"]

# Records every change of #partial and #transcript with its time, before the page's own script runs.
RECORDER = """
window.__log = [];
window.addEventListener("DOMContentLoaded", () => {
  for (const id of ["partial", "transcript"]) {
    const el = document.getElementById(id);
    new MutationObserver(() => window.__log.push([id, performance.now(), el.textContent]))
      .observe(el, { childList: true, characterData: true, subtree: true });
  }
});
"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run scripts/install.sh")
    return path


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory):
    """Three sentences of 7-10 words with pauses, at 48 kHz (a typical microphone rate), and their text."""
    words = synth.load_words("en")
    rng = random.Random(16)
    sentences = [synth.random_sentence(rng, words, 7, 10) for _ in range(3)]
    rng = random.Random(1601)
    parts = [np.zeros(int(0.5 * synth.SAMPLE_RATE), np.float32)]
    for text in sentences:
        parts.append(synth.synthesize(text, "en", "en-us", rng, augment=False).audio)
        parts.append(np.zeros(int(PAUSE_S * synth.SAMPLE_RATE), np.float32))
    audio16 = np.concatenate(parts)
    audio48 = soxr.resample(audio16, synth.SAMPLE_RATE, 48000).astype(np.float32)
    path = write_wav(tmp_path_factory.mktemp("mic") / "speech48k.wav", audio48, 48000)
    return path, len(audio48) / 48000, " ".join(sentences)


def test_the_page_streams_the_microphone_and_shows_partials_and_finals(lb_worker, microphone_wav, tmp_path):
    url, token = lb_worker
    wav, seconds, reference = microphone_wav
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True,
                                    args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}%noloop"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 720})
            page.add_init_script(RECORDER)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.fill("#token", token)
            page.click("#start")
            page.wait_for_function("document.getElementById('state').textContent === 'streaming'", timeout=30000)
            started = page.evaluate("performance.now()")
            level = 0.0
            deadline = time.time() + seconds + 1.0  # the fake microphone plays the file once, in real time
            shot = tmp_path / "demo_page.png"
            while time.time() < deadline:
                width = page.eval_on_selector("#level", "el => parseFloat(el.style.width) || 0")
                level = max(level, width)
                if not shot.exists() and page.locator("#transcript span").count() >= 2 and page.inner_text("#partial"):
                    page.screenshot(path=str(shot))  # mid-sentence: finals, a partial, the level
                time.sleep(0.2)
            finals_while_playing = page.locator("#transcript span").count()
            if not shot.exists():
                page.screenshot(path=str(shot))
            page.click("#stop")
            page.wait_for_function("document.getElementById('state').textContent === 'done'", timeout=60000)
            transcript = page.inner_text("#transcript").strip()
            latency = page.inner_text("#latency")
            log = page.evaluate("window.__log")
            error_text = page.inner_text("#error")
        finally:
            browser.close()
    if os.environ.get("SAVE_DEMO_SCREENSHOT"):
        shutil.copy(tmp_path / "demo_page.png", os.environ["SAVE_DEMO_SCREENSHOT"])

    partials = [(t - started, text) for el, t, text in log if el == "partial" and text]
    print(f"transcript: {transcript!r}; WER {jiwer.wer(reference, transcript):.3f}; latency {latency}; "
          f"{len(partials)} partial updates; finals while playing {finals_while_playing}; level max {level:.0f}%")
    assert not errors and not error_text, (errors, error_text)
    first_final = min((t - started for el, t, text in log if el == "transcript" and text), default=None)
    # partials appear while the speech plays, before its first final, and change as it goes on
    assert partials and first_final is not None and partials[0][0] < first_final, (partials, first_final)
    assert len({text for _, text in partials}) >= 3, partials
    # each pause ended an utterance while the audio was still playing
    assert finals_while_playing >= 2, log
    assert jiwer.wer(reference, transcript) <= MAX_WER, transcript
    assert latency.endswith(")") and " s" in latency, latency  # "0.93 s (median 0.95 s)"
    assert level > 10, "the level meter never moved"


# The page's worklet alone, in an OfflineAudioContext at a microphone rate: tones below 8 kHz pass
# at their level, tones above it (which plain sample dropping would fold down into the speech band)
# are filtered out, and one second in gives one second (16000 samples) out.
WORKLET_PROBE = """
async ([rate, freqs]) => {
  const out = {};
  for (const freq of freqs) {
    const ctx = new OfflineAudioContext(1, rate, rate);
    const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
    await ctx.audioWorklet.addModule(url);
    const node = new AudioWorkletNode(ctx, "pcm16-resampler",
      { numberOfOutputs: 1, processorOptions: { targetRate: 16000, frameMs: 40 } });
    const frames = [];
    node.port.onmessage = (e) => frames.push(new Int16Array(e.data.pcm));
    const tone = new OscillatorNode(ctx, { frequency: freq });
    tone.connect(new GainNode(ctx, { gain: 0.5 })).connect(node).connect(ctx.destination);
    tone.start();
    await ctx.startRendering();
    node.port.postMessage("flush");
    await new Promise((r) => setTimeout(r, 500));
    const pcm = frames.flatMap((f) => Array.from(f));
    const steady = pcm.slice(800);  // past the filter's start-up
    const rms = Math.sqrt(steady.reduce((a, x) => a + (x / 32768) ** 2, 0) / steady.length);
    out[freq] = { samples: pcm.length, rms };
  }
  return out;
}
"""


@pytest.mark.parametrize("rate", [48000, 44100])
def test_the_worklet_low_passes_and_resamples_to_16k(lb_worker, rate):
    url, _ = lb_worker
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            result = page.evaluate(WORKLET_PROBE, [rate, [1000, 3000, 12000, 20000]])
        finally:
            browser.close()
    print(rate, result)
    sine_rms = 0.5 / np.sqrt(2)
    for freq in ("1000", "3000"):  # speech band: passed at its level
        assert result[freq]["rms"] == pytest.approx(sine_rms, rel=0.03), result
        assert abs(result[freq]["samples"] - 16000) <= 100, result
    for freq in ("12000", "20000"):  # above the 8 kHz Nyquist: at least 40 dB down, not aliased
        assert result[freq]["rms"] < sine_rms / 100, result
