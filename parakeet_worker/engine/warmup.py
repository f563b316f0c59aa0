"""Engine warm-up: every shape production uses runs once at start-up, so no request pays for
kernel selection, CUDA-graph capture or module builds."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.runtime.scheduling import STREAM

log = logging.getLogger(__name__)


def warm_up(engine) -> dict:
    """Run every shape production uses once, so no request pays for kernels, CUDA-graph capture
    or module builds, in this order:
    - the streaming pipeline is built first (building it changes the model's decoding, which
      must never happen after a graph was captured). Not on CPU by default: a CPU worker is a
      development one, and the first WebSocket server builds its pipeline;
    - offline batches of 1 and MAX_BATCH_SIZE clips of 2 s and 30 s on a GPU (2 x 2 s on CPU);
    - the offline decoder's CUDA graph at its largest shape, MAX_BATCH_SIZE x the longest input
      (NeMo re-captures when a batch or a clip outgrows the last capture, so nothing smaller does);
    - local attention (its modules are built once);
    - last, one streaming step at WARMUP_STREAMS streams: its graph is captured after every
      offline capture, the order the first GPU run showed working (docs/GPU.md).
    Logs and returns what it did."""
    from parakeet_worker.engine.stream_pipeline import StreamConfig, warm_streams

    s, cuda = engine.settings, engine.device.type == "cuda"
    report: dict = {}
    t0 = time.perf_counter()
    t = t0
    n_streams = s.warmup_streams if s.warmup_streams >= 0 else (s.ws_max_sessions if cuda else 0)
    pipe = engine.stream_pipeline(StreamConfig.from_settings(s)) if n_streams else None
    if pipe is not None:
        report["stream_pipeline"] = round(time.perf_counter() - t, 2)
    rng = np.random.default_rng(0)
    shapes = (
        [(1, 2.0), (s.max_batch_size, 2.0), (1, 30.0), (s.max_batch_size, 30.0)]
        if cuda
        else [(min(2, s.max_batch_size), 2.0)]
    )
    for batch, seconds in shapes:
        t = time.perf_counter()
        clip = (rng.standard_normal(int(SAMPLE_RATE * seconds)) * 0.01).astype(np.float32)
        engine.transcribe_batch([clip] * batch)
        report[f"offline_{batch}x{seconds:g}s"] = round(time.perf_counter() - t, 2)
    if cuda and s.cuda_graphs:
        t = time.perf_counter()
        # the longest input it decodes: a full-attention clip or a local-attention window
        longest = max(engine.full_attention_limit_s, s.local_attention_window_s)
        frames = int(longest / engine.frame_seconds) + 1
        with engine.exclusive() as m, torch.inference_mode():
            # NeMo re-captures its graph when a batch or a clip is larger than any before:
            # capture it once at the largest (lengths of 1 frame: the loop itself is trivial)
            enc = torch.zeros(
                s.max_batch_size, m.encoder._feat_out, frames, device=engine.device, dtype=engine.decode_dtype
            )
            m.decoding.rnnt_decoder_predictions_tensor(
                encoder_output=enc,
                encoded_lengths=torch.ones(s.max_batch_size, dtype=torch.long, device=engine.device),
                return_hypotheses=True,
            )
        report[f"decoder_graph_{s.max_batch_size}x{frames}frames"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    if cuda:  # local attention's modules and kernels
        engine.transcribe_batch([(rng.standard_normal(SAMPLE_RATE * 2) * 0.01).astype(np.float32)], "local")
    else:  # only its modules (a CPU has no kernels to warm)
        with engine.exclusive("local"):
            pass
    report["local_attention"] = round(time.perf_counter() - t, 2)
    if pipe is not None:
        t = time.perf_counter()
        with engine.exclusive(priority=STREAM):
            warm_streams(pipe, n_streams)
        report["streams"] = {"streams": n_streams, "s": round(time.perf_counter() - t, 2)}
    report["total_s"] = round(time.perf_counter() - t0, 2)
    log.info("warmup: %s", report)
    return report
