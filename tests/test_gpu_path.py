"""The GPU's code path, run on CPU: BF16 casts and autocast offline and streaming, CUDA OOM
recovery (injected), warmup at start-up, attention switching that cannot leave the model half
converted, and the full-attention limit applied to chunks."""

import asyncio

import jiwer
import numpy as np
import pytest
import torch

from parakeet_worker.config.errors import OUT_OF_MEMORY, ASRError
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine
from parakeet_worker.engine.model_loader import load_model
from parakeet_worker.engine.stream_pipeline import StreamConfig
from parakeet_worker.engine.streaming import StreamDecoder
from tests.helpers import TINY_MODEL, requires_model
from tools.test_model import synth

pytestmark = requires_model


@pytest.fixture(scope="module")
def clips():
    return synth.make_utterances("en", synth.train_voices("en"), 4, seed=6101)


@pytest.fixture(scope="module")
def bf16_engine():
    """Its own model: casting the shared test model to bf16 and back would round its weights."""
    model = load_model(str(TINY_MODEL), device="cpu")
    return Engine(Settings(model="tiny", precision="bf16", max_batch_size=4, warmup_streams=2), model=model)


def _float_tensors_outside_encoder(model):
    enc = {id(m) for m in model.encoder.modules()}
    return {
        f"{name}.{k}": t.detach().clone()
        for name, mod in model.named_modules()
        if id(mod) not in enc
        for k, t in list(mod._parameters.items()) + list(mod._buffers.items())
        if t is not None and t.is_floating_point()
    }


def _joint_inputs(model):
    seen = []
    return seen, model.joint.enc.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))


def _stream(engine, audios):
    async def run():
        dec = StreamDecoder(engine)
        dec.start()
        texts = await dec.transcribe_whole(audios)
        await dec.stop()
        return ["<stream failed>" if t is None else t for t in texts], dec

    return asyncio.run(run())


# ---- BF16 on CPU: the GPU's casts
def test_bf16_offline_runs_the_gpus_casts_and_matches_fp32(bf16_engine, tiny_model, clips):
    model = bf16_engine.model
    assert bf16_engine.dtype == torch.bfloat16 and next(model.encoder.parameters()).dtype == torch.bfloat16
    seen, hook = _joint_inputs(model)
    try:
        bf16 = [t.text for t in bf16_engine.transcribe_batch([c.audio for c in clips])]
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.float32}  # the joint never gets the bf16 encoder output
    fp32 = [
        t.text
        for t in Engine(Settings(model="tiny", warmup=False), model=tiny_model).transcribe_batch(
            [c.audio for c in clips]
        )
    ]
    refs = [c.text for c in clips]
    assert jiwer.wer(refs, bf16) <= 0.1 and jiwer.wer(fp32, bf16) <= 0.1


def test_bf16_streaming_works_and_leaves_offline_output_and_every_buffer_as_it_was(bf16_engine, clips):
    model = bf16_engine.model
    audios = [c.audio for c in clips]
    before = bf16_engine.transcribe_batch(audios)
    tensors = _float_tensors_outside_encoder(model)
    assert "preprocessor.featurizer.fb" in tensors and all(t.dtype == torch.float32 for t in tensors.values())
    seen, hook = _joint_inputs(model)
    try:
        texts, dec = _stream(bf16_engine, audios)
    finally:
        hook.remove()
    assert dec.steps > len(audios) and not any("<stream failed>" in t for t in texts), texts
    assert set(seen) == {torch.float32}
    assert jiwer.wer([c.text for c in clips], texts) <= 0.15, texts
    after = _float_tensors_outside_encoder(model)
    assert after.keys() == tensors.keys()
    for name, t in tensors.items():  # the mel filterbank and window too: bit for bit, fp32
        assert after[name].dtype == t.dtype and torch.equal(after[name], t), name
    assert bf16_engine.transcribe_batch(audios) == before


# ---- warmup
def test_warmup_builds_the_streaming_pipeline_and_local_attention_once(bf16_engine):
    report = bf16_engine.warmup_report
    assert report["streams"]["streams"] == 2 and "offline_2x2s" in report and "local_attention" in report
    config = StreamConfig.from_settings(bf16_engine.settings)
    pipeline = bf16_engine._stream_pipelines[config]
    assert bf16_engine.attn.builds == 1
    offline_decoding = bf16_engine.model.decoding
    _, dec = _stream(bf16_engine, [np.zeros(8000, np.float32)])
    assert dec.pipeline is pipeline  # no second build on the first client...
    assert bf16_engine.model.decoding is offline_decoding  # ...so the offline decoder (and its graphs) stay


# ---- CUDA out of memory, injected
@pytest.fixture
def oom_engine(tiny_model):
    return Engine(Settings(model="tiny", warmup=False), model=tiny_model)


def _raise_oom_when(monkeypatch, engine, doomed):
    """Make the encoder raise torch.OutOfMemoryError when ``doomed(batch_size, frames, attention)``."""
    enc = engine.model.encoder
    real = enc.forward
    calls = []

    def forward(*args, **kwargs):
        sig = kwargs["audio_signal"]
        calls.append((sig.shape[0], sig.shape[-1], engine.attention))
        if doomed(sig.shape[0], sig.shape[-1], engine.attention):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(enc, "forward", forward)
    return calls


def test_oom_splits_the_batch_and_every_clip_is_transcribed(oom_engine, clips, monkeypatch):
    audios = [c.audio for c in clips]
    expected = [t.text for t in oom_engine.transcribe_batch(audios)]
    calls = _raise_oom_when(monkeypatch, oom_engine, lambda n, _frames, _att: n > 1)
    got = oom_engine.transcribe_batch(audios)
    assert [t.text for t in got] == expected and oom_engine.stats["oom_split"] == 3
    assert [c[0] for c in calls] == [4, 2, 1, 1, 2, 1, 1]


def test_oom_split_keeps_each_clips_hotwords(oom_engine, clips, monkeypatch):
    """Issue 17's per-utterance hotwords survive issue 12's split: every half decodes its own clips
    with their own trees, and the texts are those of the unsplit pass."""
    from parakeet_worker.engine import hotwords

    audios = [c.audio for c in clips]
    trees = [
        oom_engine.hotword_trees.boosting(hotwords.parse_hotwords(words, 3.0))
        for words in (["kubernetes"], ["grafana", "postgres"])
    ]
    assert all(t is not None for t in trees)
    boostings = [trees[0], None, trees[1], None]
    expected = [t.text for t in oom_engine.transcribe_batch(audios, boostings=boostings)]
    decoded = []
    from parakeet_worker.engine import engine as engine_module

    real_decode = engine_module.decode

    def decode(m, enc, enc_len, bs):
        decoded.append(list(bs))
        return real_decode(m, enc, enc_len, bs)

    monkeypatch.setattr(engine_module, "decode", decode)
    _raise_oom_when(monkeypatch, oom_engine, lambda n, _frames, _att: n > 1)
    got = oom_engine.transcribe_batch(audios, boostings=boostings)
    assert [t.text for t in got] == expected and oom_engine.stats["oom_split"] == 3
    assert decoded == [[b] for b in boostings]  # one clip per pass, each with its own tree


def test_oom_on_one_long_clip_falls_back_to_local_attention(oom_engine, clips, monkeypatch):
    audio = np.concatenate([c.audio for c in clips])
    expected = oom_engine.transcribe_batch([audio], "local")[0]
    _raise_oom_when(monkeypatch, oom_engine, lambda _n, _frames, attention: attention == "full")
    got = oom_engine.transcribe_batch([audio])[0]
    assert got.attention == "local" and got.text == expected.text and oom_engine.stats["oom_local"] == 1


def test_a_clip_that_never_fits_fails_alone_with_out_of_memory(oom_engine, clips, monkeypatch):
    long = np.concatenate([c.audio for c in clips] * 2)
    short = [c.audio for c in clips[:2]]
    expected = [t.text for t in oom_engine.transcribe_batch(short)]
    _raise_oom_when(monkeypatch, oom_engine, lambda _n, f, _att: f >= len(long) // 160)
    got = oom_engine.transcribe_batch([short[0], long, short[1]])
    assert [got[0].text, got[2].text] == expected
    assert isinstance(got[1], ASRError) and got[1].code == OUT_OF_MEMORY

    async def jobs():  # through the batcher, as concurrent jobs: only the doomed one fails
        return await asyncio.gather(
            *(oom_engine.transcribe(a) for a in (short[0], long, short[1])), return_exceptions=True
        )

    a, b, c = asyncio.run(jobs())
    assert [a.text, c.text] == expected and isinstance(b, ASRError) and b.code == OUT_OF_MEMORY


# ---- attention switching
def test_attention_is_built_once_and_a_failed_build_leaves_the_engine_whole(tiny_model, clips, monkeypatch):
    engine = Engine(Settings(model="tiny", warmup=False), model=tiny_model)
    audio = clips[0].audio
    layers = engine.attn._layers()
    full_attns, full_pos = [layer.self_attn for layer in layers], tiny_model.encoder.pos_enc
    before = engine.transcribe_batch([audio])[0]
    real = tiny_model.encoder.change_attention_model

    def half_then_fail(*args, **kwargs):  # converts one layer, then dies, as a device error would
        layers[0].self_attn = torch.nn.Identity()
        tiny_model.encoder.pos_enc = torch.nn.Identity()
        raise RuntimeError("failed mid-switch")

    monkeypatch.setattr(tiny_model.encoder, "change_attention_model", half_then_fail)
    with pytest.raises(RuntimeError, match="mid-switch"):
        engine.transcribe_batch([audio], "local")
    assert engine.attention == "full" and tiny_model.encoder.pos_enc is full_pos
    assert all(layer.self_attn is a for layer, a in zip(layers, full_attns))
    assert engine.transcribe_batch([audio])[0] == before
    monkeypatch.setattr(tiny_model.encoder, "change_attention_model", real)
    local = [engine.transcribe_batch([audio], "local")[0] for _ in range(3)]
    assert engine.attn.builds == 1 and all(t.attention == "local" and t.text == before.text for t in local)
    assert all(layer.self_attn is a for layer, a in zip(layers, full_attns))
    assert engine.transcribe_batch([audio])[0] == before


def test_chunks_longer_than_the_full_attention_limit_get_local_attention(tiny_model, clips):
    engine = Engine(Settings(model="tiny", warmup=False, local_attention_threshold_s=5.0), model=tiny_model)
    assert engine.full_attention_limit_s == 5.0
    audio = np.concatenate([c.audio for c in clips])
    over = asyncio.run(engine.transcribe(audio, chunk_long_audio=True, chunk_duration=6.0))
    under = asyncio.run(engine.transcribe(audio, chunk_long_audio=True, chunk_duration=4.0))
    assert over.attention == "local" and under.attention == "full" and over.chunks > 1


def test_full_attention_limit_defaults_to_24_min_on_cpu(oom_engine):
    assert Settings().local_attention_threshold_s == 0 and oom_engine.full_attention_limit_s == 24 * 60
