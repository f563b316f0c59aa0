"""Streaming vs offline accuracy on the test model: each clip streamed alone through the product's
WebSocket server (loopback, as fast as it accepts) and transcribed offline by the same engine.

    python bench/stream_accuracy.py --model tests/assets/tiny_parakeet.nemo --out docs/results/stream_accuracy_tiny.json

Two sets of fresh sentences (English and Russian, training voices, seeds no test or build uses):
"padded" clips drawn like the tests' sentences (0.05-0.6 s of silence around the speech) and
"unpadded" clips that start at the first sample of speech and end at its last (a session joined
mid-speech, a VAD-cut clip). Reported per set: WER of the streamed and of the offline transcript
against the reference, and WER between the two transcripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import jiwer

from _paths import ROOT, shown  # run as a script: puts the repository on sys.path

# isort: split
from client import ASRWebSocketClient, pcm16_bytes
from stream_bench import start_local_server
from tools.test_model import synth


async def stream_text(url: str, audio) -> str:
    async with ASRWebSocketClient(url) as c:
        await c.start(16000, chunk_duration=0.0)
        pcm = pcm16_bytes(audio)
        for i in range(0, len(pcm), 3200):
            await c.send_audio(pcm[i : i + 3200])
        await c.stop()
        return [m async for m in c][-1]["text"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tests" / "assets" / "tiny_parakeet.nemo"))
    ap.add_argument("--n-en", type=int, default=20)
    ap.add_argument("--n-ru", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    url, decoder, device = start_local_server(args.model)
    engine = decoder.engine  # the server's own engine: offline and streamed on the same model
    sets = {
        "padded": [
            *synth.make_utterances("en", synth.train_voices("en"), args.n_en, 7101),
            *synth.make_utterances("ru", synth.train_voices("ru"), args.n_ru, 7102),
        ],
        "unpadded": [
            u
            for u, _ in [
                *synth.edge_pairs("en", synth.train_voices("en"), args.n_en, 7103),
                *synth.edge_pairs("ru", synth.train_voices("ru"), args.n_ru, 7104),
            ]
        ],
    }
    result = {"model": shown(args.model), "device": device, "sets": {}}
    for name, utts in sets.items():
        refs = [u.text for u in utts]
        streamed = [asyncio.run(stream_text(url, u.audio)) for u in utts]
        offline = [t.text for t in engine.transcribe_batch([u.audio for u in utts])]
        row = {
            "clips": len(utts),
            "words": sum(len(r.split()) for r in refs),
            "wer_streaming": round(jiwer.wer(refs, streamed), 4),
            "wer_offline": round(jiwer.wer(refs, offline), 4),
            "wer_streaming_vs_offline": round(jiwer.wer(offline, streamed), 4),
        }
        result["sets"][name] = row
        print(name, json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
