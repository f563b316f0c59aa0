"""The offline TDT decoding: its configuration and one call over an encoded batch, each utterance
with its own hotword tree (hotwords.py)."""

from __future__ import annotations

import torch

from parakeet_worker.engine.hotwords import Boosting, register, unregister


def offline_decoding_cfg(checkpoint_cfg, cuda_graphs: bool):
    """The checkpoint's decoding config set for serving: greedy batch decoding with word
    timestamps and confidences, per-utterance biasing, CUDA graphs only when asked."""
    from omegaconf import open_dict

    dec = checkpoint_cfg.copy()
    with open_dict(dec):
        dec.strategy = "greedy_batch"
        dec.compute_timestamps = True  # always: a request without timestamps just drops them
        dec.greedy.use_cuda_graph_decoder = bool(cuda_graphs)
        # one hotword tree per utterance (hotwords.py). NeMo's multi-model keeps CUDA graphs only
        # with Triton (part of PyTorch's CUDA wheels); without it NeMo turns graphs off and says so
        dec.greedy.enable_per_stream_biasing = True
        dec.confidence_cfg = {
            "preserve_frame_confidence": True,
            "preserve_token_confidence": True,
            "preserve_word_confidence": True,
            "exclude_blank": True,
            "aggregation": "min",
            "method_cfg": {"name": "max_prob"},
        }
    return dec


def decode(m, enc: torch.Tensor, enc_len: torch.Tensor, boostings: list[Boosting | None]):
    """TDT greedy decoding, each utterance with its own hotword tree (or none): the trees are in
    the decoder's biasing multi-model for this call only. Call with the engine's lock held."""
    from nemo.collections.asr.parts.utils.timestamp_utils import process_timestamp_outputs

    computer = m.decoding.decoding.decoding_computer
    ids = register(computer.biasing_multi_model, boostings) if any(boostings) else None
    computer.ids = None if ids is None else torch.tensor(ids, dtype=torch.long)
    try:
        hyps = m.decoding.rnnt_decoder_predictions_tensor(
            encoder_output=enc, encoded_lengths=enc_len, return_hypotheses=True
        )
    finally:
        computer.ids = None
        if ids is not None:
            unregister(computer.biasing_multi_model, ids)
    return process_timestamp_outputs(hyps, m.encoder.subsampling_factor, m.cfg.preprocessor.window_stride)
