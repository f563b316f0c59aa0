"""A short, seeded run of tools/fuzz.py on every target, and a replay of the committed corpus of
inputs that once found bugs (tests/fuzz_corpus/). Long runs: ``python tools/fuzz.py --seconds N``."""

import sys

import pytest

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import fuzz  # noqa: E402

TARGETS = fuzz.targets()


@pytest.mark.parametrize("name", list(TARGETS))
def test_the_committed_corpus_stays_fixed(name):
    """Every target has a seed corpus (real inputs, valid and hostile, and the findings of past
    runs): a replay over an empty or missing folder would pass while checking nothing."""
    inputs = sorted(p for p in (fuzz.CORPUS / name).glob("*") if p.is_file())
    assert inputs, f"tests/fuzz_corpus/{name}/ is empty or missing: nothing is replayed for this target"
    assert fuzz.replay(TARGETS[name]) == []


@pytest.mark.parametrize(
    "name,examples",
    [
        ("decode", 15),
        ("base64", 150),
        ("request", 150),
        ("url", 300),
        ("ws", 100),
        ("openai", 300),
        ("multipart", 150),
        ("deepgram", 200),
        ("realtime", 200),
        ("deltas", 300),
    ],
)
def test_seeded_fuzz_smoke_finds_nothing(name, examples):
    tried, findings = fuzz.fuzz(TARGETS[name], seconds=60, seed=2026, max_rounds=1, examples_per_round=examples)
    assert tried >= examples and findings == [], findings
