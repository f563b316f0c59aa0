"""The microphone page in a real browser: Debian's headless Chromium, driven by Playwright, with a
48 kHz WAV of espeak-ng speech as its fake microphone, against the load-balancer worker (tiny
model, loopback only). The page's AudioWorklet resamples to 16 kHz and streams PCM16 over the
WebSocket on its own origin; partials must show while the speech plays, finals after each pause,
and the finals must match the spoken text. (Firefox: test_firefox.py.)

Set SAVE_DEMO_SCREENSHOT=docs/img/demo_page.png to refresh the README's screenshot."""

import os
import shutil
import time

import pytest
import soxr
from playwright.sync_api import sync_playwright

from tests.helpers import write_wav
from tests.page_checks import (
    PROBE_FREQS,
    RECORDER,
    WORKLET_PROBE,
    check_streamed_page,
    check_worklet,
    speech_with_pauses,
)
from tools.test_model import synth

CHROMIUM_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--no-sandbox",
    "--autoplay-policy=no-user-gesture-required",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: run scripts/install.sh")
    return path


@pytest.fixture(scope="module")
def microphone_wav(tmp_path_factory):
    """The speech at 48 kHz (a typical microphone rate), its duration and its text."""
    audio16, reference = speech_with_pauses()
    audio48 = soxr.resample(audio16, synth.SAMPLE_RATE, 48000).astype("float32")
    path = write_wav(tmp_path_factory.mktemp("mic") / "speech48k.wav", audio48, 48000)
    return path, len(audio48) / 48000, reference


def test_the_page_streams_the_microphone_and_shows_partials_and_finals(lb_worker, microphone_wav, tmp_path):
    url, token = lb_worker
    wav, seconds, reference = microphone_wav
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium(),
            headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}%noloop"],
        )
        try:
            page = browser.new_page(viewport={"width": 900, "height": 720})
            page.add_init_script(RECORDER)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # the page runs under its Content-Security-Policy: any violation is a failure
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(url + "/")
            page.fill("#token", token)
            page.click("#start")
            # (selectors, not string predicates: those are eval'd, which the page's CSP forbids)
            page.wait_for_selector("#state:text-is('streaming')", timeout=30000)
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
            page.wait_for_selector("#state:text-is('done')", timeout=60000)
            transcript = page.inner_text("#transcript").strip()
            latency = page.inner_text("#latency")
            log = page.evaluate("window.__log")
            error_text = page.inner_text("#error")
        finally:
            browser.close()
    if os.environ.get("SAVE_DEMO_SCREENSHOT"):
        shutil.copy(tmp_path / "demo_page.png", os.environ["SAVE_DEMO_SCREENSHOT"])
    check_streamed_page(
        reference=reference,
        transcript=transcript,
        log=log,
        started=started,
        finals_while_playing=finals_while_playing,
        latency=latency,
        errors=errors,
        error_text=error_text,
        level=level,
    )


@pytest.mark.parametrize("rate", [48000, 44100])
def test_the_worklet_low_passes_and_resamples_to_16k(lb_worker, rate):
    url, _ = lb_worker
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            result = page.evaluate(WORKLET_PROBE, [rate, PROBE_FREQS])
        finally:
            browser.close()
    print(rate, result)
    check_worklet(result)
