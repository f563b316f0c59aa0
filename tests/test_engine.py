"""The shared engine on the tiny model: batching, eval mode, long-audio paths, results."""

import asyncio
import random
import threading

import jiwer
import numpy as np
import pytest

from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.engine.windows import window_spans
from tools.test_model import synth


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine(Settings(model="tiny", max_batch_size=8, max_batch_wait_ms=50), model=tiny_model)


@pytest.fixture(scope="module")
def sentences():
    return synth.make_utterances("en", synth.train_voices("en"), 6, seed=6101)


def _modes(model):
    return {name for name, mod in model.named_modules() if mod.training}


def test_results_are_typed_and_in_bounds(engine, sentences):
    u = sentences[0]
    t = engine.transcribe_batch([u.audio])[0]
    assert jiwer.wer(u.text, t.text) <= 0.2
    assert t.duration == pytest.approx(len(u.audio) / 16000, abs=1e-3)
    assert [w.word for w in t.words] == t.text.split()
    starts = [w.start for w in t.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= t.duration for w in t.words)
    assert all(w.confidence is not None and 0.0 <= w.confidence <= 1.0 for w in t.words)
    assert " ".join(s.text for s in t.segments) == t.text
    assert t.attention == "full" and t.chunks == 1


def test_batch_call_leaves_eval_mode_and_same_output_after_nemo_transcribe(engine, tiny_model, sentences):
    audio = sentences[1].audio
    before = engine.transcribe_batch([audio])[0]
    assert not _modes(tiny_model)
    # NeMo's own transcribe() leaves encoder/decoder/joint in training mode ...
    tiny_model.transcribe([audio], timestamps=False, verbose=False)
    assert _modes(tiny_model), "NeMo behaviour changed: transcribe() no longer leaves training mode"
    # ... and the engine must not be affected by it (BatchNorm/dropout in train mode would change output)
    after = engine.transcribe_batch([audio])[0]
    assert not _modes(tiny_model)
    assert after.text == before.text and after.words == before.words


def test_concurrent_requests_are_batched_and_match_single_results(engine, sentences):
    singles = [engine.transcribe_batch([u.audio])[0].text for u in sentences]

    async def all_at_once():
        return await asyncio.gather(*(engine.transcribe(u.audio) for u in sentences))

    results = asyncio.run(all_at_once())
    assert engine._batcher.largest_batch >= 2  # they went through in shared forward passes
    assert [r.text for r in results] == singles
    for u, r in zip(sentences, results):
        assert jiwer.wer(u.text, r.text) <= 0.25


def test_silence_and_tiny_inputs_give_empty_transcripts(engine):
    out = engine.transcribe_batch([np.zeros(32000, np.float32), np.zeros(100, np.float32)])
    assert [t.text for t in out] == ["", ""] and out[0].words == [] and out[1].duration == pytest.approx(100 / 16000)


def test_local_attention_matches_full_and_switches_back(engine, tiny_model, sentences):
    audio = sentences[2].audio
    full = engine.transcribe_batch([audio])[0]
    local = asyncio.run(engine.transcribe(audio, use_local_attention=True))
    assert local.attention == "local" and local.text == full.text
    assert tiny_model.encoder.self_attention_model == "rel_pos"
    assert engine.transcribe_batch([audio])[0].words == full.words


def test_attention_switch_round_trip_leaves_the_weights_exactly_as_loaded(engine, tiny_model):
    """NeMo's change_attention_model adds randomly initialised biases to a use_bias=False encoder;
    the engine zeroes them, so a long-audio request cannot change later results."""
    import torch

    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with engine.exclusive("local"):
        local = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    after = tiny_model.state_dict()
    for state in (local, after):
        for k, v in state.items():
            if k in before:
                assert torch.equal(v, before[k]), k
            else:
                assert k.endswith(".bias") and not v.any(), k


def test_automatic_local_attention_above_threshold(tiny_model, sentences):
    eng = Engine(Settings(model="tiny", local_attention_threshold_s=1.0, warmup=False), model=tiny_model)
    t = asyncio.run(eng.transcribe(sentences[3].audio))
    assert t.attention == "local" and jiwer.wer(sentences[3].text, t.text) <= 0.25


def test_chunk_spans_cover_the_audio_with_overlap():
    spans = window_spans(100.0, 30.0)
    assert spans[0][0] == 0.0 and spans[-1][1] == 100.0
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end - start >= 2.0  # overlap wider than any word
    assert all(b - a <= 30.0 + 1e-9 for a, b in spans)


def test_seam_falls_in_a_pause_both_chunks_agree_on():
    from parakeet_worker.engine.transcript import Word
    from parakeet_worker.engine.windows import seam_between

    left = [Word("a", 10.0, 10.4), Word("b", 10.5, 11.0), Word("c", 11.6, 12.0)]
    right = [Word("b", 10.52, 11.02), Word("c", 11.62, 12.0), Word("d", 12.1, 12.5)]
    seam = seam_between(left, right, 10.0, 12.6)
    assert 11.0 < seam < 11.6  # the only real pause


@pytest.fixture(scope="module")
def long_clip():
    rng = random.Random(6202)
    words = synth.load_words("en")
    utts = [
        synth.synthesize(synth.random_sentence(rng, words, 8, 12), "en", "en-us", rng, augment=False) for _ in range(8)
    ]
    # ~35 s, little silence between sentences
    return np.concatenate([u.audio for u in utts]), " ".join(u.text for u in utts)


def test_local_attention_windows_merge_without_losing_words(tiny_model, long_clip):
    audio, ref = long_clip
    eng = Engine(
        Settings(model="tiny", local_attention_window_s=12.0, max_batch_size=2, warmup=False), model=tiny_model
    )  # two windows per forward
    fractions = []
    t = asyncio.run(eng.transcribe(audio, use_local_attention=True, on_progress=fractions.append))
    assert t.attention == "local" and t.chunks == len(window_spans(len(audio) / 16000, 12.0, 16.0)) >= 4
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) == (t.chunks + 1) // 2
    assert jiwer.wer(ref, t.text) <= 0.1
    assert abs(len(t.words) - len(ref.split())) <= 2
    starts = [w.start for w in t.words]
    assert starts == sorted(starts) and t.words[-1].end <= t.duration


def test_chunked_long_audio_loses_and_doubles_no_words(engine, long_clip):
    audio, ref = long_clip
    whole = engine.transcribe_batch([audio])[0]
    chunked = asyncio.run(engine.transcribe(audio, chunk_long_audio=True, chunk_duration=7.0))
    assert chunked.chunks > 3
    # the seams really cut speech: at least one chunk ends inside continuous speech (every 10-ms
    # frame within 20 ms of the cut is sound; the clip is unaugmented, so its pauses are zeros).
    # Read from the audio, not from word timestamps: those are 80-ms frames narrower than the
    # sound, and test model v3's put every cut of this clip between two words.
    cuts = [end for _, end in window_spans(len(audio) / 16000, 7.0)[:-1]]

    def in_speech(cut: float) -> bool:
        frames = audio[int(cut * 16000) - 320 : int(cut * 16000) + 320].reshape(-1, 160)
        return bool((np.sqrt((frames**2).mean(axis=1)) > 1e-3).all())

    inside = sum(in_speech(c) for c in cuts)
    assert inside >= 1
    wer_whole, wer_chunked = jiwer.wer(ref, whole.text), jiwer.wer(ref, chunked.text)
    print(f"WER whole {wer_whole:.3f} chunked {wer_chunked:.3f}, {chunked.chunks} chunks, {inside} cuts in speech")
    assert wer_chunked <= wer_whole + 0.03
    assert abs(len(chunked.words) - len(ref.split())) <= 2
    starts = [w.start for w in chunked.words]
    assert starts == sorted(starts) and chunked.words[-1].end <= chunked.duration


def test_lean_subsampling_masks_give_nemos_exact_output(tiny_model):
    """The engine's subsampling forward skips redundant padding masks; the output must be NeMo's,
    bit for bit, for a padded batch and for a single clip."""
    import torch
    from nemo.collections.asr.parts.submodules.subsampling import MaskedConvSequential

    from parakeet_worker.engine.nemo_patches import lean_subsampling_masks

    rng = np.random.default_rng(3)
    sigs = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (48000, 80123, 40000)]
    batch = torch.zeros(len(sigs), max(map(len, sigs)))
    for i, s in enumerate(sigs):
        batch[i, : len(s)] = torch.from_numpy(s)
    length = torch.tensor([len(s) for s in sigs])
    convs = [m for m in tiny_model.modules() if isinstance(m, MaskedConvSequential)]
    with torch.inference_mode():
        feats, feat_len = tiny_model.preprocessor(input_signal=batch, length=length)
        inputs = [(feats.transpose(1, 2), feat_len), (feats[:1, :, : int(feat_len[0])].transpose(1, 2), feat_len[:1])]
        saved = [vars(m).pop("forward", None) for m in convs]  # NeMo's own forward
        try:
            reference = [tiny_model.encoder.pre_encode(x, n) for x, n in inputs]
            assert lean_subsampling_masks(tiny_model) == len(convs) >= 1
            lean = [tiny_model.encoder.pre_encode(x, n) for x, n in inputs]
        finally:
            for m, f in zip(convs, saved):
                vars(m).pop("forward", None)
                if f is not None:
                    m.forward = f
    for (a, la), (b, lb) in zip(reference, lean):
        assert torch.equal(la, lb) and torch.equal(a, b)


def test_a_short_job_is_not_held_up_by_a_chunked_long_one(tiny_model, long_clip, sentences):
    audio, _ = long_clip
    eng = Engine(Settings(model="tiny", max_batch_size=2, max_batch_wait_ms=5, warmup=False), model=tiny_model)
    first_pass = threading.Event()  # set from inside the long job's first forward pass
    real_pass = eng._model_pass

    def model_pass(*args):
        first_pass.set()
        return real_pass(*args)

    eng._model_pass = model_pass

    async def both():
        long_job = asyncio.create_task(eng.transcribe(audio, chunk_long_audio=True, chunk_duration=5.0))
        # the long job's first wave is in the model: the short job arrives behind it
        assert await asyncio.to_thread(first_pass.wait, 120), "the long job never reached the model"
        short = await eng.transcribe(sentences[0].audio)
        batches_before_short = eng._batcher.batches_run
        return short, batches_before_short, await long_job

    short, batches_before_short, long_result = asyncio.run(both())
    # 9 chunks, 2 per forward pass: the short job rides in the second or third pass, not the fifth
    assert long_result.chunks >= 8 and eng._batcher.batches_run >= 5
    assert batches_before_short <= 3, "the short job waited for the long one's chunks"
    assert jiwer.wer(sentences[0].text, short.text) <= 0.2


def test_every_window_of_a_local_attention_job_runs_with_local_attention_while_streams_are_live(tiny_model, long_clip):
    """One windowing path: a local-attention job cut again into the live pass budget's windows
    (a stream is live) runs every one of them with local attention, as its result reports."""
    audio, ref = long_clip
    eng = Engine(
        Settings(model="tiny", local_attention_window_s=20.0, live_min_window_s=10.0, max_batch_size=2, warmup=False),
        model=tiny_model,
    )
    used = []
    real = eng.transcribe_batch

    def recording(signals, attention="full", boostings=None):
        used.append((attention, round(max(len(s) for s in signals) / 16000, 1)))
        return real(signals, attention, boostings)

    eng.transcribe_batch = recording
    eng.budget.live_streams = 1  # as the streaming decoder sets it while a stream is open
    try:
        t = asyncio.run(eng.transcribe(audio, use_local_attention=True))
    finally:
        eng.budget.live_streams = 0
    assert t.attention == "local" and t.chunks >= 2
    assert used and {a for a, _ in used} == {"local"}, used
    # some window was cut again into the live budget's passes (10 s before any pass is timed)
    assert len(used) > t.chunks and min(s for _, s in used) <= 10.0, used
    assert jiwer.wer(ref, t.text) <= 0.15
