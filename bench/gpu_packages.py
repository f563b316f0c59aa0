"""What the GPU machine (device tool, kind nvidia-h200) already has, and which of it is in a version that
the worker's packages exclude: those must be carried in .whl/ (bench/wheelhouse.sh) although the machine
has them. Checked by version specifier, not by name: NeMo 3.0 pins lightning<=2.4.0, the machine has a
newer one, and with it `import nemo` failed (nv_one_logger's `@override` check).

    python3 bench/gpu_packages.py names             # the machine's distributions (wheelhouse.sh: GPU_HAS)
    python3 bench/gpu_packages.py report [--wheels DIR]  # conflicts with the known versions, from the
                                                    # installed metadata or the wheels' own
    python3 bench/gpu_packages.py runtime SITE      # on the GPU machine, after installing the wheels into
                                                    # SITE: what still conflicts (logs only, exit 0)

Needs only the standard library and `packaging`.
"""

import re
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]

# The machine's distributions, from the device tool's notes on its kinds (KINDS.md, nvidia-h200: "Python
# packages already there", read on a machine on 2026-11-17), and the versions its `pip list` row gives
# (sessions' output, 2026-11); the rest are None, unknown. Python 3.12.3.
_NAMES = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13
nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir
onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton
typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp"""
_KNOWN = {
    "accelerate": "1.15.0",
    "botorch": "0.18.1",
    "cupy-cuda13x": "14.2.0",
    "gpytorch": "1.15.2",
    "huggingface-hub": "1.33.0",
    "jax": "0.11.2",
    "jax-cuda13-pjrt": "0.11.2",
    "jax-cuda13-plugin": "0.11.2",
    "jaxlib": "0.11.2",
    "jaxtyping": "0.3.11",
    "numpy": "2.5.2",
    "numpyro": "0.21.0",
    "onnx": "1.23.1",
    "onnx-ir": "1.0.0",
    "onnxruntime": "1.30.0",
    "onnxscript": "0.7.2",
    "pytorch-lightning": "2.6.6",
    "safetensors": "0.8.0",
    "sentence-transformers": "6.0.1",
    "sentencepiece": "0.2.2",
    "tiktoken": "0.14.0",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "torch-geometric": "2.8.0.post1",
    "torchaudio": "2.11.0",
    "torchdiffeq": "0.2.5",
    "torchmetrics": "1.9.0",
    "torchvision": "0.26.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
    # Listed without a version; assumed to match pytorch-lightning (both are cut from one release), and
    # newer than 2.4.0 it is: `import nemo` failed there until lightning 2.4.0 was carried.
    "lightning": "2.6.6",
}
GPU_VERSIONS: dict[str, str | None] = {n: _KNOWN.get(n) for n in _NAMES.split()}

# Markers are evaluated for the machine, not for the Python that runs this.
GPU_MARKERS = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.3",
    "python_version": "3.12",
    "sys_platform": "linux",
}


@dataclass(frozen=True, order=True)
class Conflict:
    name: str  # the distribution
    have: str  # its version there
    spec: str  # the specifier it violates
    by: str  # the distribution that states it ("requirements.txt": the worker)

    def __str__(self):
        return f"{self.name} {self.have} violates {self.by}'s {self.name}{self.spec}"


def roots(path=ROOT / "requirements.txt") -> list[Requirement]:
    """The worker's direct requirements, names and extras only: its pins are the image's versions, not
    ranges it needs (the specifiers that matter are the packages' own, below)."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            req.specifier = SpecifierSet()
            out.append(req)
    return out


def pinned(path=ROOT / "bench" / "wheel_requirements.txt") -> dict[str, str]:
    """name -> version of the carried list."""
    out = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, ver = line.partition("==")
            out[canonicalize_name(name)] = ver.strip()
    return out


def installed_requires(name: str) -> list[str] | None:
    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return None


def wheel_requires(dest) -> Callable[[str], list[str] | None]:
    """Requires-Dist of the wheels in dest, by distribution (what is carried, not what is installed)."""
    table = {}
    for whl in sorted(Path(dest).glob("*.whl")):
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
            msg = Parser().parsestr(z.read(meta).decode("utf-8", "replace"))
        table[canonicalize_name(msg["Name"])] = msg.get_all("Requires-Dist") or []
    return table.get


def wheel_versions(dest) -> dict[str, str]:
    wheels = (parse_wheel_filename(p.name) for p in Path(dest).glob("*.whl"))
    return {canonicalize_name(name): str(ver) for name, ver, *_ in wheels}


def _applies(req: Requirement, extras: Iterable[str], env: Mapping[str, str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in extras)


def _walk(versions, carried, requires, root_reqs, env):
    """Yield (by, requirement, version there or None) for every requirement that applies on the machine:
    the worker's, then recursively those of each carried distribution and of each one that must be
    (a violated specifier), with the extras asked for. The machine's own packages bring their own."""
    carried = {canonicalize_name(n) for n in carried}
    done, queue = set(), [("requirements.txt", r) for r in root_reqs]
    while queue:
        by, req = queue.pop(0)
        name = canonicalize_name(req.name)
        have = versions.get(name)
        yield by, req, have
        bad = have is not None and not req.specifier.contains(have, prereleases=True)
        if name not in carried and not bad:
            continue
        extras = {""} | {canonicalize_name(e) for e in req.extras}
        new = {e for e in extras if (name, e) not in done}
        if not new:
            continue
        done.update((name, e) for e in new)
        for line in requires(name) or ():
            sub = Requirement(line)
            # the base requirements once (extra ""), then only what each new extra adds
            if _applies(sub, new, env) and not (sub.marker is None and "" not in new):
                queue.append((name, sub))


def _version(v):
    try:
        return Version(v) if v is not None else None
    except InvalidVersion:
        return None


def conflicts(
    versions: Mapping[str, str | None] = GPU_VERSIONS,
    carried: Iterable[str] = (),
    requires: Callable[[str], list[str] | None] = installed_requires,
    root_reqs=None,
    env: Mapping[str, str] = GPU_MARKERS,
) -> list[Conflict]:
    """Specifiers that the versions in `versions` (name -> version; None: unknown) violate. With the
    machine's versions (the default): the distributions it has that must be carried anyway."""
    versions = {canonicalize_name(n): _version(v) for n, v in versions.items()}
    root_reqs = roots() if root_reqs is None else root_reqs
    found = {
        Conflict(canonicalize_name(r.name), str(have), str(r.specifier), by)
        for by, r, have in _walk(versions, carried, requires, root_reqs, env)
        if have is not None and not r.specifier.contains(have, prereleases=True)
    }
    return sorted(found)


def unknown(
    versions: Mapping[str, str | None] = GPU_VERSIONS,
    carried: Iterable[str] = (),
    requires=installed_requires,
    root_reqs=None,
    env=GPU_MARKERS,
) -> list[tuple[str, str, str]]:
    """(name, specifier, by) for the machine's packages of unknown version that a specifier bounds:
    the runtime check on the machine (runtime()) reads their real versions."""
    root_reqs = roots() if root_reqs is None else root_reqs
    vs = {canonicalize_name(n): _version(v) for n, v in versions.items()}
    return sorted(
        {
            (canonicalize_name(r.name), str(r.specifier), by)
            for by, r, have in _walk(vs, carried, requires, root_reqs, env)
            if have is None and canonicalize_name(r.name) in vs and r.specifier
        }
    )


def runtime(site) -> list[str]:
    """On the machine, after the wheels went into site (first on sys.path): the versions there now,
    carried or the machine's, against the same specifiers. One line per violated one."""

    def named(dists):  # a folder without readable metadata has no name: skipped
        return [(canonicalize_name(d.metadata["Name"]), d.version) for d in dists if d.metadata["Name"]]

    carried = {n for n, _ in named(metadata.distributions(path=[str(site)]))}
    versions = {}
    for n, v in named(metadata.distributions()):  # sys.path order: the first of a name is the one imported
        versions.setdefault(n, v)
    lines = []
    for c in conflicts(versions, carried, env=default_environment()):
        where = "carried" if c.name in carried else "the machine's own"
        lines.append(f"specifier conflict: {c} ({c.name} is {where})")
    return lines or [f"specifiers: no conflict ({len(carried)} carried distributions)"]


def main(argv):
    cmd = argv[0] if argv else "report"
    if cmd == "names":
        print(" ".join(GPU_VERSIONS))
    elif cmd == "runtime":
        for line in runtime(argv[1]):
            print(line)
    elif cmd == "report":
        if argv[1:2] == ["--wheels"]:
            requires, carried = wheel_requires(argv[2]), wheel_versions(argv[2])
        else:
            requires, carried = installed_requires, pinned()
        for c in conflicts(GPU_VERSIONS, carried, requires):
            have = carried.get(c.name)
            print(f"carry: {c}; carried: {have or 'NO'}")
        for name, spec, by in unknown(GPU_VERSIONS, carried, requires):
            print(f"unknown there: {name}, {by} needs {name}{spec}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except InvalidRequirement as e:
        sys.exit(f"gpu_packages: {e}")
