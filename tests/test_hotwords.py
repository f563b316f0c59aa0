"""Hotwords (per-request phrase boosting) with the tiny model: limits, spellings, the gain on
sentences it gets wrong, no harm to sentences it gets right, per-utterance lists in one forward
pass, streaming with and without hotwords in one step, and refusals in the batch job and the
WebSocket ``start``. The sentences are synthesized fresh from fixed seeds; which of them the model
gets wrong is found by transcribing them, never written down."""

import asyncio
import random

import jiwer
import numpy as np
import pytest

from parakeet_worker.config.errors import ASRError
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine import hotwords as hw
from parakeet_worker.engine.engine import Engine
from parakeet_worker.engine.streaming import StreamDecoder
from parakeet_worker.serving.job_schema import parse_request
from tests.helpers import requires_model
from tools.test_model import synth

# With the default boost, on other fresh sentences in these voices (docs/PERFORMANCE.md
# "Hotwords"), the missed words all came back in about 57% of the wrong sentences, and 10 unrelated
# hotwords changed 7-10% of the right ones; one sample of ~20 wrong sentences varies by about
# +-11 points, hence the bounds. That was the v1 test model; v2 (issue 15) makes fewer errors on
# this sample (15 wrong sentences of 80) and the ones left are further from the truth: 5 of 15
# come back (33%), so the bound is 30% (it was 40% with v1).
MIN_FIXED = 0.3  # share of wrong sentences whose missed words all come back
# Streaming gains less on the tiny model (its errors with 1.6 s of left context are further from
# the truth; about 30% fixed, docs/PERFORMANCE.md): a real gain is required, not the batch one.
MIN_FIXED_STREAMING = 0.2
MAX_HARMED = 0.15  # share of right sentences that 10 unrelated hotwords change
VOICES = synth.HELD_OUT["en"]  # voices the model never heard: it errs often enough to measure


# ---------------------------------------------------------------------------------------------
# limits and spellings (no model)
@pytest.mark.parametrize(
    "hotwords, boost, message",
    [
        ("kubernetes", None, "must be a list"),
        (["ok"] * (hw.MAX_HOTWORDS + 1), None, f"at most {hw.MAX_HOTWORDS}"),
        ([""], None, "is empty"),
        (["   "], None, "is empty"),
        ([42], None, "must be a string"),
        (["x" * (hw.MAX_PHRASE_CHARS + 1)], None, "longer than"),
        (["one two three four five six"], None, "more than"),
        (["<script>"], None, "contains"),
        (["line\nbreak"], None, None),  # whitespace is normalized: this one is fine
        (["emoji 🎉"], None, "contains"),
        (["ok"], -1, "hotword_boost"),
        (["ok"], 99, "hotword_boost"),
        (["ok"], "high", "hotword_boost"),
        (["ok"], True, "hotword_boost"),
        (["ok"], float("nan"), "hotword_boost"),
    ],
)
def test_hotword_limits(hotwords, boost, message):
    if message is None:
        assert hw.parse_hotwords(hotwords, boost).phrases == ("line break",)
        return
    with pytest.raises(hw.HotwordError, match=message):
        hw.parse_hotwords(hotwords, boost)


def test_parse_normalizes_and_deduplicates():
    given = ["  Kubernetes ", "kubernetes", "O\u2019Brien", "Node.js", "AT&T", "C++", "Müller", "мальчик"]
    assert hw.parse_hotwords(given, 2) == hw.Hotwords(
        ("Kubernetes", "O'Brien", "Node.js", "AT&T", "C++", "Müller", "мальчик"), 2.0
    )
    for nothing in [(None, None), ([], None), (["a"], 0)]:  # no list, an empty one, or boost 0: nothing to do
        assert hw.parse_hotwords(*nothing) is None
    assert hw.parse_hotwords(["a"], None).boost == hw.DEFAULT_BOOST


def test_spellings_follow_the_tokenizer_case():
    assert hw.spellings("Kubernetes", cased=False) == ["kubernetes"]
    assert set(hw.spellings("kubernetes", cased=True)) == {"kubernetes", "Kubernetes"}
    assert set(hw.spellings("new york", cased=True)) == {"new york", "New york", "New York"}
    assert "IBM" in hw.spellings("IBM", cased=True)


# ---------------------------------------------------------------------------------------------
# the gain, with the tiny model


@pytest.fixture(scope="module")
def engine(tiny_model):
    # a long batching window: the batcher test below must not depend on this shared CPU's speed
    return Engine(Settings(model="tiny", max_batch_size=16, max_batch_wait_ms=500, warmup=False), model=tiny_model)


@pytest.fixture(scope="module")
def sample(engine):
    """80 fresh sentences in held-out voices, their offline transcripts, and for the wrong ones the
    reference words the transcript misses."""
    utts = synth.make_utterances("en", VOICES, 80, seed=2611)
    got = [
        t.text for k in range(0, len(utts), 16) for t in engine.transcribe_batch([u.audio for u in utts[k : k + 16]])
    ]
    refs = [u.text.strip() for u in utts]
    wrong = [i for i in range(len(utts)) if got[i] != refs[i]]
    missed = {i: sorted(set(refs[i].split()) - set(got[i].split())) for i in wrong}
    wrong = [i for i in wrong if missed[i]]  # (a sentence with only an extra word has nothing to boost)
    assert len(wrong) >= 12, "the sample must hold enough errors to measure"
    return utts, refs, got, wrong, missed


def boosting(engine, words):
    return engine.hotword_trees.boosting(hw.parse_hotwords(words, None))


def recovered(text, words):
    return not set(words) - set(text.split())


@requires_model
def test_missed_words_as_hotwords_fix_most_wrong_sentences_in_one_mixed_batch(engine, sample):
    utts, refs, got, wrong, missed = sample
    right = [i for i in range(len(utts)) if got[i] == refs[i]][:8]
    # one forward pass: wrong sentences with their own hotwords, right ones with none
    idx = wrong + right
    out = engine.transcribe_batch(
        [utts[i].audio for i in idx], boostings=[boosting(engine, missed[i]) if i in missed else None for i in idx]
    )
    fixed = [i for i, t in zip(idx, out) if i in missed and recovered(t.text, missed[i])]
    assert len(fixed) >= MIN_FIXED * len(wrong), [(refs[i], got[i], t.text) for i, t in zip(idx, out) if i in missed]
    assert jiwer.wer([refs[i] for i in wrong], [t.text for t in out[: len(wrong)]]) < 0.6 * jiwer.wer(
        [refs[i] for i in wrong], [got[i] for i in wrong]
    )
    # the utterances without hotwords decode exactly as before, timestamps included
    for i, t in zip(right, out[len(wrong) :]):
        assert t.text == got[i]
    for t in out:  # boosted or not: word times in order, inside the audio
        assert [w.word for w in t.words] == t.text.split()
        assert all(0 <= w.start <= w.end <= t.duration for w in t.words)


@requires_model
def test_unrelated_hotwords_do_not_hurt_right_sentences(engine, sample):
    utts, refs, got, wrong, missed = sample
    right = [i for i in range(len(utts)) if got[i] == refs[i]][:24]
    spoken = {w for i in right for w in refs[i].split()}
    unrelated = random.Random(5).sample([w for w in synth.load_words("en") if w not in spoken], 10)
    out = engine.transcribe_batch([utts[i].audio for i in right], boostings=[boosting(engine, unrelated)] * len(right))
    harmed = [(refs[i], t.text) for i, t in zip(right, out) if t.text != refs[i]]
    assert len(harmed) <= MAX_HARMED * len(right), (unrelated, harmed)


@pytest.fixture(scope="module")
def fixed_offline(engine, sample):
    """The wrong sentences that one offline pass with their missed words as hotwords gets closer to
    the truth (every missed word back, fewer errors): the first three, found by transcribing."""
    utts, refs, got, wrong, missed = sample
    out = engine.transcribe_batch(
        [utts[i].audio for i in wrong], boostings=[boosting(engine, missed[i]) for i in wrong]
    )
    fixed = [
        i
        for i, t in zip(wrong, out)
        if recovered(t.text, missed[i]) and jiwer.wer(refs[i], t.text) < jiwer.wer(refs[i], got[i])
    ]
    assert len(fixed) >= 3, "boosting the missed words fixed (almost) none of the wrong sentences"
    return fixed[:3]


def occurrences(text, words):
    return sum(text.split().count(w) for w in words)


@requires_model
def test_engine_transcribe_takes_hotwords_through_the_batcher(engine, sample, fixed_offline, monkeypatch):
    """Hotwords given to ``Engine.transcribe`` reach the decoding: through the batcher (boosted and
    plain requests in one batch), and in every window of long audio (chunked, and local
    attention). Each boosted result is strictly closer to the truth than the same audio without."""
    utts, refs, got, wrong, missed = sample

    async def short_jobs():
        return await asyncio.gather(
            *(engine.transcribe(utts[i].audio, hotwords=hw.parse_hotwords(missed[i], None)) for i in fixed_offline),
            *(engine.transcribe(utts[i].audio) for i in fixed_offline),
        )

    batches = engine._batcher.batches_run
    out = asyncio.run(short_jobs())
    assert engine._batcher.batches_run == batches + 1  # different hotwords (and none), one batch
    for i, with_hw, without in zip(fixed_offline, out[:3], out[3:]):
        assert without.text == got[i]
        assert recovered(with_hw.text, missed[i]), (refs[i], with_hw.text)
        assert jiwer.wer(refs[i], with_hw.text) < jiwer.wer(refs[i], got[i]), (refs[i], got[i], with_hw.text)

    # long audio in windows (chunked, and local attention) carries the hotwords into every window
    passed = []  # the boostings of every forward pass
    real_pass = engine._model_pass

    def model_pass(m, batch, length, boostings):
        passed.extend(boostings)
        return real_pass(m, batch, length, boostings)

    monkeypatch.setattr(engine, "_model_pass", model_pass)
    longs = {i: np.concatenate([utts[i].audio] * 3) for i in fixed_offline}
    words = [w for i in fixed_offline for w in missed[i]]
    for kw in ({"chunk_long_audio": True, "chunk_duration": 5.0}, {"use_local_attention": True}):

        async def long_jobs(boosted, kw=kw):
            return await asyncio.gather(
                *(
                    engine.transcribe(longs[i], hotwords=hw.parse_hotwords(missed[i], None) if boosted else None, **kw)
                    for i in fixed_offline
                )
            )

        plain = asyncio.run(long_jobs(False))
        passed.clear()
        boosted = asyncio.run(long_jobs(True))
        assert passed and None not in passed, "a window of a job with hotwords ran without them"
        if kw.get("chunk_long_audio"):
            assert all(len(t.parts or []) >= 2 for t in boosted), "the long audio did not run in windows"
        refs3 = [" ".join([refs[i]] * 3) for i in fixed_offline]
        before, after = ([t.text for t in ts] for ts in (plain, boosted))
        assert occurrences(" ".join(after), words) > occurrences(" ".join(before), words), (kw, before, after)
        assert jiwer.wer(refs3, after) < jiwer.wer(refs3, before), (kw, before, after)
        for t in boosted:
            assert t.text and all(0 <= w.start <= w.end <= t.duration for w in t.words)


@requires_model
def test_streaming_with_hotwords_gives_the_same_gain(engine, sample):
    """Wrong sentences streamed with their missed words and right ones without, in the same
    decoding steps: the boosted streams recover missed words and lose fewer, the others decode
    exactly as they do with no hotwords anywhere."""
    utts, refs, got, wrong, missed = sample
    right = [i for i in range(len(utts)) if got[i] == refs[i]][:4]
    idx = wrong[:12] + right  # 16 streams: one step decodes them all

    async def run(dec, lists):
        dec.start()
        texts = await dec.transcribe_whole([utts[i].audio for i in idx], lists)
        await dec.stop()
        assert None not in texts
        return texts

    async def plain_then_boosted():
        dec = StreamDecoder(engine)
        plain = await run(dec, [None] * len(idx))
        boosted = await run(dec, [boosting(engine, missed[i]) if i in missed else None for i in idx])
        return plain, boosted, dec.boosted

    plain, boosted, left = asyncio.run(plain_then_boosted())
    stream_wrong = [k for k, i in enumerate(idx) if i in missed and not recovered(plain[k], missed[i])]
    fixed = [k for k in stream_wrong if recovered(boosted[k], missed[idx[k]])]
    assert len(stream_wrong) >= 6
    assert len(fixed) >= MIN_FIXED_STREAMING * len(stream_wrong), [
        (refs[idx[k]], plain[k], boosted[k]) for k in stream_wrong
    ]
    sentences = [refs[idx[k]] for k in stream_wrong]
    before, after = ([texts[k] for k in stream_wrong] for texts in (plain, boosted))
    assert jiwer.wer(sentences, after) < jiwer.wer(sentences, before)
    assert [b for b, i in zip(boosted, idx) if i not in missed] == [p for p, i in zip(plain, idx) if i not in missed]
    assert left == 0  # every stream's tree left the multi-model with it


# ---------------------------------------------------------------------------------------------
# refusals at the entry points
@pytest.mark.parametrize(
    "extra",
    [
        {"hotwords": "one"},
        {"hotwords": ["ok"] * 101},
        {"hotwords": ["<b>"]},
        {"hotword_boost": 50},
        {"hotwords": ["ok"], "hotword_boost": "x"},
    ],
)
def test_batch_job_refuses_invalid_hotwords(extra):
    with pytest.raises(ASRError) as e:
        parse_request({"audio_url": "https://example.com/a.wav", **extra})
    assert e.value.code == "invalid_input"


def test_batch_job_takes_hotwords():
    req = parse_request({"audio_url": "https://example.com/a.wav", "hotwords": ["Kubernetes"], "hotword_boost": 2})
    assert req.hotwords == hw.Hotwords(("Kubernetes",), 2.0)
    assert parse_request({"audio_url": "https://example.com/a.wav"}).hotwords is None
