"""The wheels carried to the GPU machine (bench/wheel_requirements.txt, bench/wheelhouse.sh) hold every
package the machine has in a version that a specifier of NeMo, of the worker or of a carried package
excludes. The specifiers are read from the installed metadata, the machine's versions from
bench/gpu_packages.py; a newer lightning there broke `import nemo`."""

from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from bench import gpu_packages as gp

try:
    metadata.distribution("nemo_toolkit")
except metadata.PackageNotFoundError:
    pytest.skip("nemo_toolkit is not installed: no specifiers to read", allow_module_level=True)


def _fits(version, spec):
    return SpecifierSet(spec).contains(version, prereleases=True)


def test_every_gpu_version_a_specifier_excludes_is_carried_in_one_that_fits():
    pins = gp.pinned()
    found = gp.conflicts(gp.GPU_VERSIONS, pins)
    assert found, "no conflict at all: the lightning one is known (see the next test)"
    for c in found:
        assert c.name in pins, f"{c}: carry {c.name} (bench/wheel_requirements.txt)"
        assert _fits(pins[c.name], c.spec), f"{c}: the carried {c.name} {pins[c.name]} does not fit either"
    # with the wheels installed over the machine's packages, nothing known conflicts any more
    assert gp.conflicts({**gp.GPU_VERSIONS, **pins}, pins) == []


def test_lightning_is_carried_because_nemo_excludes_the_machines():
    asr = [Requirement(r) for r in metadata.requires("nemo_toolkit")]
    spec = next(r.specifier for r in asr if r.name == "lightning" and r.marker.evaluate({"extra": "asr"}))
    assert not spec.contains(gp.GPU_VERSIONS["lightning"])  # the failure seen on the GPU machine
    assert "lightning" in {c.name for c in gp.conflicts(gp.GPU_VERSIONS, gp.pinned())}
    assert spec.contains(gp.pinned()["lightning"])


def test_flags_a_violated_specifier_and_not_a_fitting_version():
    nemo = [Requirement("nemo_toolkit[asr]")]
    flagged = gp.conflicts({"lightning": "2.6.6"}, ["nemo-toolkit"], root_reqs=nemo)
    assert [c.name for c in flagged] == ["lightning"] and flagged[0].by == "nemo-toolkit"
    assert gp.conflicts({"lightning": "2.4.0"}, ["nemo-toolkit"], root_reqs=nemo) == []
    # not carried: nemo's specifiers are not read
    assert gp.conflicts({"lightning": "2.6.6"}, [], root_reqs=[Requirement("nemo_toolkit")]) == []
    # an unknown version is not a conflict, only reported
    assert gp.conflicts({"lightning": None}, ["nemo-toolkit"], root_reqs=nemo) == []
    assert any(n == "lightning" for n, _, _ in gp.unknown({"lightning": None}, ["nemo-toolkit"], root_reqs=nemo))


def test_markers_extras_and_what_a_violated_one_needs():
    requires = {
        "a": ["b>=2", "c<1; extra == 'x'", "d<1; python_version < '3.12'", "e<1; sys_platform == 'linux'"],
        "b": ["f==1"],  # read because b must be carried, though it is not yet
    }.get
    versions = {"b": "1.0", "c": "1.5", "d": "1.0", "e": "1.0", "f": "2"}
    with_x = gp.conflicts(versions, ["a"], requires, root_reqs=[Requirement("a[x]")])
    assert [(c.name, c.by) for c in with_x] == [("b", "a"), ("c", "a"), ("e", "a"), ("f", "b")]
    plain = gp.conflicts(versions, ["a"], requires, root_reqs=[Requirement("a")])
    assert [c.name for c in plain] == ["b", "e", "f"]  # c only with the extra, d not on Python 3.12


def test_the_known_versions_name_the_machines_packages():
    assert {n for n, v in gp.GPU_VERSIONS.items() if v} == set(gp._KNOWN)
    assert gp.GPU_VERSIONS["pytorch-lightning"] == "2.6.6" and gp.GPU_VERSIONS["torch"] == "2.11.0"
