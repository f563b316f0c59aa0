"""Getting a NeMo model from disk into memory quickly: the part of a cold start that is ours.

A worker's cold start is billed time, and NeMo's ``restore_from`` spends most of it on work that
a restore throws away. For the 0.6 B model on a 2-core CPU (docs/PERFORMANCE.md, "Start-up"):
- it unpacks the 2.5 GB ``.nemo`` archive into a temporary folder on every start;
- it builds the network with random initial weights (Kaiming uniform for 600 M parameters) that
  the checkpoint overwrites a moment later;
- it reads the checkpoint into memory and then copies it into the network.

So the loader restores from a folder unpacked once (``extract``, run at image build time), skips
the random initialisation, and memory-maps the checkpoint. NeMo still builds the model from its
own config and loads the state dict with ``strict=True``, so every parameter and buffer comes from
the checkpoint: a missing one is an error, never an uninitialised tensor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import torch
from nemo.core.connectors.save_restore_connector import SaveRestoreConnector

from parakeet_worker.runtime import hardware

log = logging.getLogger(__name__)

CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"
_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)


@contextlib.contextmanager
def skip_weight_init():
    """Make ``torch.nn.init`` a no-op while a model whose weights will be loaded is built."""
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


class FastRestoreConnector(SaveRestoreConnector):
    """NeMo's restore, minus the random initialisation, with the checkpoint memory-mapped."""

    def restore_from(self, *args, **kwargs):
        with skip_weight_init():
            return super().restore_from(*args, **kwargs)

    @staticmethod
    def _load_state_dict_from_disk(model_weights, map_location="cpu"):
        try:  # tensors are read from the page cache as load_state_dict copies them
            return torch.load(model_weights, map_location=map_location, mmap=True, weights_only=False)
        except RuntimeError:  # a legacy (non-zip) checkpoint cannot be mapped
            return SaveRestoreConnector._load_state_dict_from_disk(model_weights, map_location)


def is_extracted(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file()


def extracted_path(name: str, cache_dir: str) -> Path:
    """Where ``extract`` puts the model ``name`` (a Hugging Face id or a ``.nemo`` path)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name.strip("/")).strip("-.") or "model"
    return Path(cache_dir) / slug


def nemo_file(name: str) -> str:
    """The ``.nemo`` archive or unpacked folder for ``name``, local or downloaded from Hugging Face."""
    from nemo.collections.asr.models import ASRModel

    if Path(name).exists():  # a .nemo file, or a folder unpacked from one
        return name
    if name.endswith(".nemo"):
        raise FileNotFoundError(f"model file not found: {name}")
    return ASRModel.from_pretrained(model_name=name, return_model_file=True)


def extract(name: str, cache_dir: str) -> Path:
    """Unpack the model once into ``cache_dir`` (the image build's bake step); returns the folder."""
    dest = extracted_path(name, cache_dir)
    if is_extracted(dest):
        return dest
    source = nemo_file(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        if Path(source).is_dir():  # a Hugging Face repository that is already unpacked: copy it
            shutil.copytree(source, tmp / "model")
        else:
            with tarfile.open(source, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        inner = list(tmp.rglob(CONFIG_NAME))
        if len(inner) != 1 or not is_extracted(inner[0].parent):
            raise ValueError(f"{source} is not a NeMo archive ({CONFIG_NAME} + {WEIGHTS_NAME})")
        os.replace(inner[0].parent, dest)  # appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted %s into %s", name, dest)
    return dest


def restore(name: str, device: torch.device, cache_dir: str = ""):
    """Load ``name`` (Hugging Face id, ``.nemo`` file, or an extracted folder) onto ``device``."""
    from nemo.collections.asr.models import ASRModel

    cached = extracted_path(name, cache_dir) if cache_dir else None
    # the copy unpacked at build time if there is one; else the local file or folder, or NeMo's
    # download of a Hugging Face id (once, into its own cache)
    source = str(cached) if cached is not None and is_extracted(cached) else nemo_file(name)
    connector = FastRestoreConnector()
    if is_extracted(source):
        connector.model_extracted_dir = source
    return ASRModel.restore_from(source, map_location=device, save_restore_connector=connector)


if __name__ == "__main__":  # python -m parakeet_worker.engine.model_loader [NAME] [CACHE_DIR]: the image's bake
    import sys

    from parakeet_worker.config.logs import configure_logging
    from parakeet_worker.config.settings import Settings

    s = Settings.from_env_or_exit()
    configure_logging(s)
    name = sys.argv[1] if len(sys.argv) > 1 else s.model
    cache = sys.argv[2] if len(sys.argv) > 2 else s.model_cache_dir
    if not cache:
        sys.exit("no cache folder: pass one or set PARAKEET_MODEL_CACHE")
    print(extract(name, cache))


def load_model(name_or_path: str, device: str | None = None, cache_dir: str = ""):
    """Load a NeMo ASR model (Hugging Face id, ``.nemo`` file or extracted folder), in eval mode,
    on ``device`` (``cuda`` when present unless told otherwise; an explicit ``cuda`` without a
    usable GPU raises ``hardware.DeviceUnavailable``, never a silent fall back to CPU).
    ``cache_dir`` (``Settings.model_cache_dir``; "" = none) holds models unpacked at build time."""
    dev = hardware.resolve_device(device or "")
    model = restore(name_or_path, dev, cache_dir).to(dev).eval()
    log.info("loaded %s on %s", name_or_path, dev)
    return model
