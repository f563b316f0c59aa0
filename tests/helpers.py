"""Constants and small helpers the tests share (fixtures live in conftest.py)."""

import os
import socket
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from constants import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = Path(os.environ.get("TINY_MODEL_PATH", ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))

requires_model = pytest.mark.skipif(
    not TINY_MODEL.exists(), reason=f"{TINY_MODEL} is not built yet (python tools/test_model/build_tiny.py)")

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_wav(path, samples, rate=SAMPLE_RATE):
    sf.write(str(path), samples, rate, subtype="PCM_16")
    return path


def encode(src, dst, args):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)], check=True)
    return dst
