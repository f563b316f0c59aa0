"""Benchmarks run as ``python bench/NAME.py`` from anywhere: this makes the repository (the worker's
package and the test-model tools, ``tools.test_model.synth``) importable, in one place.
``PATHS`` also serves child processes."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = [str(ROOT)]
sys.path[:0] = [p for p in PATHS if p not in sys.path]


def shown(path) -> str:
    """A path as results files name it: relative to the repository, else its name alone (a
    machine's absolute paths never go into a committed result)."""
    p = Path(str(path))
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return p.name if p.is_absolute() or p.exists() else str(path)
