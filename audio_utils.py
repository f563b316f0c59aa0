"""Audio in: what the worker makes of a file, before any model sees it.

    python audio_utils.py call.mp3                 # container, duration, samples
    python audio_utils.py call.mp3 -o call16k.wav  # the 16 kHz mono audio the model would get

The same path every route takes: the container is sniffed from the bytes (never the file name),
only recognised audio is decoded (soundfile, else ffmpeg with the sniffed demuxer), and the result
is 16 kHz mono float32 within MAX_AUDIO_SECONDS. Where the parts live:

- parakeet_worker/audio/formats.py - base64 and data: URLs, container sniffing;
- parakeet_worker/audio/decode.py - decoding and resampling, bounded in time and memory;
- parakeet_worker/audio/budget.py - the memory all concurrent decodes may hold;
- parakeet_worker/audio/fetch.py and url_policy.py - ``audio_url`` downloads, public addresses only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from parakeet_worker.audio.decode import decode_audio
from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.errors import ASRError
from parakeet_worker.config.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("-o", "--out", type=Path, help="write the decoded audio as 16 kHz mono PCM16 WAV")
    args = ap.parse_args()
    try:
        audio = decode_audio(args.file, Settings.from_env_or_exit().max_audio_seconds)
    except ASRError as exc:
        sys.exit(f"{args.file}: {exc}")
    print(f"{args.file}: {audio.format}, {audio.duration:.3f} s, {len(audio.samples)} samples at {SAMPLE_RATE} Hz")
    if args.out:
        import soundfile

        soundfile.write(args.out, audio.samples, SAMPLE_RATE, subtype="PCM_16")


if __name__ == "__main__":
    main()
