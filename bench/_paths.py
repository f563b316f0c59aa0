"""Benchmarks run as ``python bench/NAME.py`` from anywhere: this makes the repository (the worker's
package and the test-model tools, ``tools.test_model.synth``) importable, in one place.
``PATHS`` also serves child processes."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATHS = [str(ROOT)]
sys.path[:0] = [p for p in PATHS if p not in sys.path]
