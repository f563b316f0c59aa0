"""Synthetic speech for the test model: random sentences from the word lists, spoken by espeak-ng.

Everything is driven by a seed, so the same call gives the same audio. Voices are espeak-ng
accent + voice-variant pairs; the HELD_OUT voices never appear in training data.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from constants import SAMPLE_RATE  # the repository root is on the path (pytest, bench/_paths, the builders)

ASSETS = Path(__file__).resolve().parents[2] / "tests" / "assets"
_ESPEAK_RATE = 22050

# Accents (espeak-ng language voices) and voice variants (speaker timbres).
ACCENTS = {
    "en": ["en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan"],
    "ru": ["ru", "ru-lv"],
}
TRAIN_VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f5", "klatt", "klatt2"]
# Held-out voices: variants (and, for English, an accent) that training never hears.
HELD_OUT = {
    "en": ["en-us+m6", "en-gb+f4", "en-us-nyc+klatt4"],
    "ru": ["ru+m6", "ru+f4", "ru-lv+klatt4"],
}


def train_voices(lang: str) -> list[str]:
    return [a + (f"+{v}" if v else "") for a in ACCENTS[lang] for v in TRAIN_VARIANTS]


def load_words(lang: str) -> list[str]:
    name = "words.txt" if lang == "en" else f"words_{lang}.txt"
    words = [w.strip() for w in (ASSETS / name).read_text(encoding="utf-8").splitlines()]
    return [w for w in words if w]


@dataclass
class Utterance:
    text: str
    lang: str
    voice: str
    audio: np.ndarray  # float32, 16 kHz mono
    speech_start: float  # seconds of leading silence
    speech_end: float  # seconds where speech (espeak output) ends


def random_sentence(rng: random.Random, words: list[str], lo: int = 3, hi: int = 12) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))


def espeak(text: str, voice: str, speed: int = 175, pitch: int = 50, gap: int = 0) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return float32 audio at 16 kHz.

    With ESPEAK_CACHE set to a folder, espeak-ng's output is kept there (compressed) and read
    back on the next identical call, so a machine without espeak-ng (the GPU benchmark machine)
    gets bit-identical audio from a folder filled elsewhere."""
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(gap), "--stdout", text]
    cache = os.environ.get("ESPEAK_CACHE")
    path = Path(cache) / (hashlib.sha1("\0".join(cmd).encode()).hexdigest()[:20] + ".npz") if cache else None
    if path is not None and path.exists():
        pcm16 = np.load(path)["pcm"]
    else:
        raw = subprocess.run(cmd, check=True, capture_output=True).stdout
        # --stdout writes a streaming WAV header (sizes 0), so read the PCM after the 44-byte header.
        pcm16 = np.frombuffer(raw[44 : 44 + (len(raw) - 44) // 2 * 2], dtype="<i2")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, pcm=pcm16)
    pcm = pcm16.astype(np.float32) / 32768.0
    return soxr.resample(pcm, _ESPEAK_RATE, SAMPLE_RATE).astype(np.float32)


def synthesize(text: str, lang: str, voice: str, rng: random.Random, augment: bool = True) -> Utterance:
    """One utterance with random speaking rate, pitch, loudness, silences and light noise."""
    if augment:
        speed, pitch, gap = rng.randint(120, 200), rng.randint(25, 75), rng.choice([0, 0, 0, 1, 2])
    else:
        speed, pitch, gap = 175, 50, 0
    speech = espeak(text, voice, speed, pitch, gap)
    nz = np.flatnonzero(np.abs(speech) > 1e-3)
    if nz.size:  # espeak pads a little silence itself; keep its speech span as given
        speech = speech[max(nz[0] - 160, 0) : nz[-1] + 160]
    lead = rng.uniform(0.05, 0.6) if augment else 0.2
    tail = rng.uniform(0.05, 0.6) if augment else 0.2
    audio = np.concatenate([
        np.zeros(int(lead * SAMPLE_RATE), np.float32), speech, np.zeros(int(tail * SAMPLE_RATE), np.float32)
    ])
    if augment:
        gain = rng.uniform(0.1, 0.95) / max(float(np.abs(audio).max()), 1e-4)
        audio *= gain
        snr_db = rng.uniform(15.0, 45.0)
        power = float(np.mean(speech**2)) * gain**2 if speech.size else 1e-8
        np_rng = np.random.default_rng(rng.getrandbits(32))
        audio += np_rng.standard_normal(audio.size).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    return Utterance(text, lang, voice, audio.astype(np.float32), lead, lead + speech.size / SAMPLE_RATE)


def pad_batch(audios: list[np.ndarray]):
    """(signals (B, T) float32 tensor zero-padded, lengths (B,) tensor) for a NeMo model's forward."""
    import torch

    lens = torch.tensor([len(a) for a in audios])
    sig = torch.zeros(len(audios), int(lens.max()))
    for i, a in enumerate(audios):
        sig[i, : len(a)] = torch.from_numpy(a)
    return sig, lens


def make_utterances(lang: str, voices: list[str], n: int, seed: int, augment: bool = True) -> list[Utterance]:
    rng = random.Random(seed)
    words = load_words(lang)
    out = []
    for _ in range(n):
        text = random_sentence(rng, words)
        out.append(synthesize(text, lang, rng.choice(voices), rng, augment))
    return out
