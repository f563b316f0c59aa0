"""The engine: Parakeet loaded once, every transcription through it. Run it on files:

    PARAKEET_MODEL=tests/assets/tiny_parakeet.nemo DEVICE=cpu python asr_engine.py speech.wav more.mp3
    python asr_engine.py talk.flac --json                # text, words with times, segments

Settings come from the environment (README, "Configuration"), as for the worker. Where the parts live:

- parakeet_worker/engine/engine.py - ``Engine``: load, warm up, one model user at a time, batched passes;
- parakeet_worker/engine/long_audio.py - long clips in windows, merged at pauses;
- parakeet_worker/engine/streaming.py - the batched streaming decoder (live streams);
- parakeet_worker/engine/hotwords.py - per-utterance hotword boosting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

from parakeet_worker.audio.decode import decode_audio_async
from parakeet_worker.config.errors import ASRError
from parakeet_worker.config.logs import configure_logging
from parakeet_worker.config.settings import Settings
from parakeet_worker.engine.engine import Engine


async def transcribe_files(settings: Settings, paths: list[Path], as_json: bool) -> int:
    engine = Engine(settings)
    failed = 0
    for path in paths:
        try:
            audio = await decode_audio_async(path, settings.max_audio_seconds)
            t = await engine.transcribe(audio.samples)
        except ASRError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps({"file": str(path), **asdict(t)}, ensure_ascii=False) if as_json else f"{path}: {t.text}")
    return 1 if failed else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--json", action="store_true", help="one JSON object per file, with words and segments")
    args = ap.parse_args()
    settings = Settings.from_env_or_exit()
    configure_logging(settings)
    sys.exit(asyncio.run(transcribe_files(settings, args.files, args.json)))


if __name__ == "__main__":
    main()
