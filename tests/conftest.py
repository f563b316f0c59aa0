"""Shared fixtures: the bundled tiny Parakeet model and speech synthesized on the fly."""

import random

import pytest

import synth
from tests.helpers import FORMATS, SAMPLE_TEXT, TINY_MODEL, encode, write_wav


@pytest.fixture(scope="session")
def tiny_model():
    """The committed test model, loaded through the product's own loading function."""
    from asr_engine import load_model

    if not TINY_MODEL.exists():
        pytest.skip(f"{TINY_MODEL} is not built yet (python tools/test_model/build_tiny.py)")
    return load_model(str(TINY_MODEL), device="cpu")


@pytest.fixture(scope="session")
def speech_files(tmp_path_factory):
    """{format: path} of one English sentence (SAMPLE_TEXT) in every supported format."""
    d = tmp_path_factory.mktemp("formats")
    utt = synth.synthesize(SAMPLE_TEXT, "en", "en-us", random.Random(0), augment=False)
    src = write_wav(d / "source.wav", utt.audio)
    return {fmt: encode(src, d / f"speech.{fmt}", args) for fmt, args in FORMATS.items()}
