"""What the microphone page tests check, whichever browser runs the page (test_browser.py:
Chromium through Playwright; test_firefox.py: Firefox ESR through WebDriver BiDi)."""

import random

import jiwer
import numpy as np
import pytest

from tools.test_model import synth

PAUSE_S = 1.5  # longer than STREAM_EOU_MS: each sentence gets its own final while the audio plays
# The same audio streamed by the Python client at 16 kHz, starting 0-200 ms into the file (the page
# starts wherever the fake microphone is when it opens): WER 3.8-11.5% on the tiny model, which
# often mishears the first word after a pause. Bound between the WebSocket tests' 8% (30 clips) and
# 30% (short clips with pauses).
MAX_WER = 0.2

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
PROBE_FREQS = [1000, 3000, 12000, 20000]


def speech_with_pauses(lead_s: float = 0.5) -> tuple[np.ndarray, str]:
    """Three sentences of 7-10 words with pauses (16 kHz), and their text."""
    words = synth.load_words("en")
    rng = random.Random(16)
    sentences = [synth.random_sentence(rng, words, 7, 10) for _ in range(3)]
    rng = random.Random(1601)
    parts = [np.zeros(int(lead_s * synth.SAMPLE_RATE), np.float32)]
    for text in sentences:
        parts.append(synth.synthesize(text, "en", "en-us", rng, augment=False).audio)
        parts.append(np.zeros(int(PAUSE_S * synth.SAMPLE_RATE), np.float32))
    return np.concatenate(parts), " ".join(sentences)


def check_streamed_page(
    *,
    reference: str,
    transcript: str,
    log: list,
    started: float,
    finals_while_playing: int,
    latency: str,
    errors: list,
    error_text: str,
    level: float | None = None,
) -> None:
    """Partials while the speech plays, a final after each pause, finals that match the speech."""
    partials = [(t - started, text) for el, t, text in log if el == "partial" and text]
    print(
        f"transcript: {transcript!r}; WER {jiwer.wer(reference, transcript):.3f}; latency {latency}; "
        f"{len(partials)} partial updates; finals while playing {finals_while_playing}; level max {level}"
    )
    assert not errors and not error_text, (errors, error_text)
    first_final = min((t - started for el, t, text in log if el == "transcript" and text), default=None)
    # partials appear while the speech plays, before its first final, and change as it goes on
    assert partials and first_final is not None and partials[0][0] < first_final, (partials, first_final)
    assert len({text for _, text in partials}) >= 3, partials
    # each pause ended an utterance while the audio was still playing
    assert finals_while_playing >= 2, log
    assert jiwer.wer(reference, transcript) <= MAX_WER, transcript
    assert latency.endswith(")") and " s" in latency, latency  # "0.93 s (median 0.95 s)"
    if level is not None:
        assert level > 10, "the level meter never moved"


def check_worklet(result: dict) -> None:
    sine_rms = 0.5 / np.sqrt(2)
    for freq in ("1000", "3000"):  # speech band: passed at its level
        assert result[freq]["rms"] == pytest.approx(sine_rms, rel=0.03), result
        assert abs(result[freq]["samples"] - 16000) <= 100, result
    for freq in ("12000", "20000"):  # above the 8 kHz Nyquist: at least 40 dB down, not aliased
        assert result[freq]["rms"] < sine_rms / 100, result
