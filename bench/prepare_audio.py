"""Speak, once, every sentence the GPU suite uses, into ESPEAK_CACHE (default .bench_audio/).

    python bench/prepare_audio.py          # here, where espeak-ng is installed

The GPU machine has no espeak-ng; with ESPEAK_CACHE pointing at the folder carried there,
tools/test_model/synth.py reads the very same audio back. Keep the calls below in step with
what bench/gpu_suite.sh and bench/gpu_check.sh run (clip counts and seeds).
"""

from __future__ import annotations

import os
from pathlib import Path

from _paths import ROOT  # run as a script: puts the repository on sys.path

os.environ.setdefault("ESPEAK_CACHE", str(ROOT / ".bench_audio"))

import batch_bench  # noqa: E402
import gpu_check  # noqa: E402
import hotword_bench  # noqa: E402
import long_audio_bench  # noqa: E402
import stream_bench  # noqa: E402
from tools.test_model import (
    build_full,  # noqa: E402
    synth,  # noqa: E402
)


def main() -> None:
    batch_bench.clips_for(32, 4242)  # batch_bench and gpu_levers
    long_audio_bench.long_signal(0.01)  # the 60-sentence pool behind every duration
    for i in range(stream_bench.CLIP_POOL):
        stream_bench.make_stream_audio(i)
    synth.make_utterances("en", ["en-us"], 10, 77)  # startup_bench
    build_full.calibration_clips()
    hotword_bench.cost_clips(32)  # the hotwords part (--batch/--streams 32)
    hotword_bench.accuracy_sentences(120, 4242)
    gpu_check.clips()  # bench/gpu_check.sh
    cache = Path(os.environ["ESPEAK_CACHE"])
    files = list(cache.glob("*.npz"))
    print(f"{cache}: {len(files)} clips, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
