"""The bundled test model really recognises speech: WER bounds on sentences synthesized now,
word timestamps in order and in bounds, Russian in Cyrillic.

Sentences and voices are drawn with seeds that the model build never used, so this is fresh
audio for the model; synthesis is deterministic, so the test is too.
"""

import re

import jiwer
import pytest

from tests.helpers import TINY_MODEL
from tools.test_model import synth

N = 40  # sentences per set: about 300 words, enough to resolve a 5% bound

CASES = {
    # name: (language, held-out voices?, seed, max WER). Measured on these sets: v4 (issue 15)
    # 3.7% / 2.3% / 0.4% / 1.1%, v3 4.0% / 2.3% / 0.7% / 1.5%, v2 6.1% / 4.0% / 1.8% / 5.1%, v1 4.9%
    # (English, training voices). v2 needed 6.5% for the first (v1's 5% held by the luck of the
    # sample: 5.2% on 80 sentences); v3 and v4 bring every bound below where it has been (5%, 7%,
    # 5%, 8% before issue 15).
    "en_train_voices": ("en", False, 5101, 0.05),
    "en_held_out_voices": ("en", True, 5102, 0.04),
    "ru_train_voices": ("ru", False, 5103, 0.03),
    "ru_held_out_voices": ("ru", True, 5104, 0.03),
}


def _voices(lang, held_out):
    return synth.HELD_OUT[lang] if held_out else synth.train_voices(lang)


@pytest.fixture(scope="module")
def results(tiny_model):
    out = {}
    for name, (lang, held_out, seed, _) in CASES.items():
        utts = synth.make_utterances(lang, _voices(lang, held_out), N, seed)
        hyps = tiny_model.transcribe([u.audio for u in utts], batch_size=8, timestamps=True, verbose=False)
        tiny_model.eval()
        out[name] = (utts, hyps)
    return out


def test_architecture_is_parakeet_tdt(tiny_model):
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    cfg = tiny_model.cfg
    assert isinstance(tiny_model, EncDecRNNTBPEModel)
    assert cfg.encoder.subsampling == "dw_striding" and cfg.encoder.subsampling_factor == 8
    assert cfg.encoder.self_attention_model == "rel_pos" and cfg.preprocessor.features == 128
    assert list(cfg.decoding.durations) == [0, 1, 2, 3, 4] and cfg.decoding.model_type == "tdt"
    assert tiny_model.joint.num_extra_outputs == 5
    assert 100 <= tiny_model.tokenizer.vocab_size <= 1000
    assert sum(p.numel() for p in tiny_model.parameters()) < 20_000_000
    assert TINY_MODEL.stat().st_size <= 20 * 1024 * 1024
    assert cfg.validation_ds is not None and "use_start_end_token" in cfg.validation_ds


@pytest.mark.parametrize("name", list(CASES))
def test_wer_within_bound(results, name):
    utts, hyps = results[name]
    wer = jiwer.wer([u.text for u in utts], [h.text for h in hyps])
    print(f"{name}: WER {wer:.3f}")
    assert wer <= CASES[name][3], f"{name}: WER {wer:.3f} > {CASES[name][3]}"


@pytest.mark.parametrize("name", list(CASES))
def test_word_timestamps_ordered_inside_audio_and_on_speech(results, name):
    utts, hyps = results[name]
    for u, h in zip(utts, hyps):
        words = h.timestamp["word"]
        assert len(words) == len(h.text.split())
        duration = len(u.audio) / 16000
        prev_start = prev_end = 0.0
        for w in words:
            assert 0.0 <= w["start"] <= w["end"] <= duration
            assert w["start"] >= prev_start and w["start"] >= prev_end - 0.08  # monotone, at most one frame of overlap
            prev_start, prev_end = w["start"], w["end"]
        # the words sit on the speech, not in the leading or trailing silence
        assert words[0]["start"] >= u.speech_start - 0.25
        assert words[-1]["end"] <= u.speech_end + 0.25


def test_russian_is_cyrillic(results):
    for name in ("ru_train_voices", "ru_held_out_voices"):
        utts, hyps = results[name]
        text = " ".join(h.text for h in hyps)
        assert text and re.fullmatch(r"[а-яё ]+", text), text[:200]


# Clips with no silence around the speech (espeak-ng output trimmed to its first and last sample)
# and 1-2-word utterances: (language, seed of the sentences, seed of the short utterances).
# The bounds are issue 15's targets; v1 and v2 of the test model missed them (v2: Russian first
# word 89%, 1-2 words exact 55-70% through the engine), v3 and v4 meet them (v4: first word
# 94.5-99.5%, 1-2 words 81.5-97% on the build's 200 per set, MODEL_CARD.md; on these 40: first word
# 100% and 100%, WER 2.1% and 0.7%, 1-2 words 88% and 95%).
EDGE_CASES = {"en": ("en", 5201, 5202), "ru": ("ru", 5203, 5204)}
N_SHORT = 40
EDGE_MAX_WER = {"en": 0.05, "ru": 0.05}  # unpadded sentences, training voices
EDGE_MIN_FIRST_WORD = 0.9
SHORT_MIN_EXACT = 0.8
# NeMo's transcribe() pads clips under 1 s to 1 s with zeros: v3 before its digital-silence
# fine-tune got 51-64% of such clips right, v4 gets 77.5-93% (200 per set; 78% and 95% on these
# 40); 40 clips vary by ~6 points.
SHORT_MIN_EXACT_NEMO_TRANSCRIBE = 0.7


@pytest.fixture(scope="module")
def edge_results(tiny_model):
    """Per language: (sentences, their transcripts, 1-2-word utterances, theirs, theirs through
    NeMo's transcribe()). The product's batch engine transcribes the clips as they are; NeMo's
    transcribe() first pads every clip under 1 s to 1 s with zeros at both ends."""
    from parakeet_worker.config.settings import Settings
    from parakeet_worker.engine.engine import Engine

    engine = Engine(Settings(model="tiny", warmup=False), model=tiny_model)
    out = {}
    for name, (lang, seed, seed_short) in EDGE_CASES.items():
        voices = synth.train_voices(lang)
        sentences = [u for u, _ in synth.edge_pairs(lang, voices, N, seed)]
        short = [u for u, _ in synth.edge_pairs(lang, voices, N_SHORT, seed_short, words_range=(1, 2))]
        audios = [u.audio for u in sentences + short]
        texts = [t.text.strip() for i in range(0, len(audios), 8) for t in engine.transcribe_batch(audios[i : i + 8])]
        nemo = tiny_model.transcribe([u.audio for u in short], batch_size=8, verbose=False)
        tiny_model.eval()
        out[name] = (sentences, texts[:N], short, texts[N:], [h.text.strip() for h in nemo])
    return out


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_speech_from_the_first_sample_is_recognised(edge_results, name):
    sentences, texts, _, _, _ = edge_results[name]
    refs = [u.text for u in sentences]
    wer = jiwer.wer(refs, texts)
    first = sum(t.split()[:1] == r.split()[:1] for r, t in zip(refs, texts)) / len(refs)
    print(f"{name} unpadded: WER {wer:.3f}, first word {first:.2f}")
    assert wer <= EDGE_MAX_WER[name], list(zip(refs, texts))
    assert first >= EDGE_MIN_FIRST_WORD, [(r, t) for r, t in zip(refs, texts) if r.split()[:1] != t.split()[:1]]


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_one_and_two_word_utterances_are_recognised(edge_results, name):
    _, _, short, texts, _ = edge_results[name]
    exact = sum(u.text == t for u, t in zip(short, texts)) / len(short)
    print(f"{name} 1-2 words: exact {exact:.2f}")
    assert exact >= SHORT_MIN_EXACT, [(u.text, t) for u, t in zip(short, texts) if u.text != t]


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_one_and_two_word_utterances_through_nemo_transcribe(edge_results, name):
    """The same clips through NeMo's own transcribe() (what a user of the .nemo alone calls): it
    surrounds them with digital silence, which the model must read as silence."""
    _, _, short, _, texts = edge_results[name]
    exact = sum(u.text == t for u, t in zip(short, texts)) / len(short)
    print(f"{name} 1-2 words through NeMo transcribe(): exact {exact:.2f}")
    assert exact >= SHORT_MIN_EXACT_NEMO_TRANSCRIBE, [(u.text, t) for u, t in zip(short, texts) if u.text != t]


def test_silence_gives_no_words(tiny_model):
    import numpy as np

    hyps = tiny_model.transcribe([np.zeros(32000, np.float32)], timestamps=False, verbose=False)
    tiny_model.eval()
    assert hyps[0].text.strip() == ""
