"""Shared fixtures: the bundled tiny Parakeet model and speech synthesized on the fly."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = Path(os.environ.get("TINY_MODEL_PATH", ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools" / "test_model"))


requires_model = pytest.mark.skipif(
    not TINY_MODEL.exists(), reason=f"{TINY_MODEL} is not built yet (python tools/test_model/build_tiny.py)")


@pytest.fixture(scope="session")
def tiny_model():
    """The committed test model, loaded through the product's own loading function."""
    from asr_engine import load_model

    if not TINY_MODEL.exists():
        pytest.skip(f"{TINY_MODEL} is not built yet (python tools/test_model/build_tiny.py)")
    return load_model(str(TINY_MODEL), device="cpu")


# Every container/codec the product claims, made by ffmpeg from one espeak-ng utterance.
FORMATS = {
    "wav": ["-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le"],  # stereo 44.1 kHz: downmix + resample
    "flac": ["-ar", "22050", "-c:a", "flac"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    "ogg": ["-c:a", "libvorbis", "-q:a", "4"],
    "opus": ["-c:a", "libopus", "-b:a", "32k", "-f", "ogg"],
    "webm": ["-c:a", "libopus", "-b:a", "32k", "-f", "webm"],
    "m4a": ["-c:a", "aac", "-b:a", "64k", "-f", "ipod"],
}
SAMPLE_TEXT = "good morning teacher please open window today"


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_wav(path, samples, rate=16000):
    import soundfile as sf

    sf.write(str(path), samples, rate, subtype="PCM_16")
    return path


def encode(src, dst, args):
    import subprocess

    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)], check=True)
    return dst


@pytest.fixture(scope="session")
def speech_files(tmp_path_factory):
    """{format: path} of one English sentence (SAMPLE_TEXT) in every supported format."""
    import random

    import synth

    d = tmp_path_factory.mktemp("formats")
    utt = synth.synthesize(SAMPLE_TEXT, "en", "en-us", random.Random(0), augment=False)
    src = write_wav(d / "source.wav", utt.audio)
    return {fmt: encode(src, d / f"speech.{fmt}", args) for fmt, args in FORMATS.items()}
