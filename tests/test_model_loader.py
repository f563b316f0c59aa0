"""The fast model loader restores exactly what NeMo's own restore does, from archive or folder."""

import tarfile

import pytest
import torch

from parakeet_worker.config.settings import Settings
from parakeet_worker.engine import model_loader
from parakeet_worker.engine.engine import Engine
from parakeet_worker.engine.model_loader import load_model
from tests.helpers import TINY_MODEL, requires_model
from tools.test_model import synth

pytestmark = requires_model


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for get in (lambda m: m.state_dict(), lambda m: dict(m.named_buffers())):
        ta, tb = get(a), get(b)
        assert ta.keys() == tb.keys(), set(ta) ^ set(tb)
        differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not differ, differ


def test_fast_restore_equals_nemos_restore_and_leaves_init_working():
    from nemo.collections.asr.models import ASRModel

    reference = ASRModel.restore_from(str(TINY_MODEL), map_location="cpu").eval()
    fast = load_model(str(TINY_MODEL), device="cpu", cache_dir="")
    _same_tensors(reference, fast)
    # the no-op init is scoped to the restore: a layer built afterwards is initialised as usual
    w = torch.nn.Linear(64, 64).weight
    assert w.abs().sum() > 0 and w.std() > 0.01


def test_extracted_folder_gives_the_same_model_and_transcripts(tmp_path):
    from nemo.collections.asr.models import ASRModel

    # a fresh reference: other tests adapt the shared model (attention modes, streaming)
    reference = ASRModel.restore_from(str(TINY_MODEL), map_location="cpu").eval()
    folder = model_loader.extract(str(TINY_MODEL), str(tmp_path))
    assert model_loader.is_extracted(folder) and folder.parent == tmp_path
    assert model_loader.extract(str(TINY_MODEL), str(tmp_path)) == folder  # once only
    from_cache = load_model(str(TINY_MODEL), device="cpu", cache_dir=str(tmp_path))
    from_folder = load_model(str(folder), device="cpu", cache_dir="")
    _same_tensors(reference, from_cache)
    _same_tensors(reference, from_folder)
    copied = model_loader.extract(str(folder), str(tmp_path / "again"))  # an unpacked source is copied
    assert model_loader.is_extracted(copied) and copied.parent == tmp_path / "again"

    clips = [u.audio for u in synth.make_utterances("en", ["en-us"], 3, 4242)]
    settings = Settings(model=str(TINY_MODEL), device="cpu", warmup=False)
    expected = [t.text for t in Engine(settings, model=reference).transcribe_batch(clips)]
    got = [t.text for t in Engine(settings, model=from_folder).transcribe_batch(clips)]
    assert got == expected and all(expected)


def test_engine_restores_from_the_callers_cache_folder(tmp_path, monkeypatch):
    """Settings flow in from the caller: Engine(settings) restores through settings.model_cache_dir
    (it used to read PARAKEET_MODEL_CACHE itself and ignore the caller's folder)."""
    monkeypatch.delenv("PARAKEET_MODEL_CACHE", raising=False)
    model_loader.extract(str(TINY_MODEL), str(tmp_path))
    seen, restore = [], model_loader.restore
    monkeypatch.setattr(
        model_loader, "restore", lambda name, dev, cache: seen.append(cache) or restore(name, dev, cache)
    )
    engine = Engine(Settings(model=str(TINY_MODEL), device="cpu", model_cache_dir=str(tmp_path), warmup=False))
    assert seen == [str(tmp_path)] and engine.device.type == "cpu"


def test_bad_archives_fail_clearly_and_leave_no_partial_folder(tmp_path):
    garbage = tmp_path / "garbage.nemo"
    garbage.write_bytes(b"this is not a tar archive" * 100)
    with pytest.raises(tarfile.ReadError):
        model_loader.extract(str(garbage), str(tmp_path / "cache"))
    empty = tmp_path / "empty.nemo"
    with tarfile.open(empty, "w:gz") as tar:
        tar.add(__file__, arcname="readme.txt")
    with pytest.raises(ValueError, match="not a NeMo archive"):
        model_loader.extract(str(empty), str(tmp_path / "cache"))
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "missing.nemo"), device="cpu", cache_dir="")
