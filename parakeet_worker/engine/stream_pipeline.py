"""NeMo's buffered streaming pipeline, built on the engine's already loaded model (never a second
copy), and the frames it consumes. ``Engine.stream_pipeline`` builds one per ``StreamConfig``;
``StreamDecoder`` (streaming.py) feeds it."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import torch

from parakeet_worker.config.constants import SAMPLE_RATE
from parakeet_worker.config.settings import Settings

log = logging.getLogger("streaming")
# Stream ids are unique in the process: decoders built on one engine share its pipeline's state table.
_STREAM_IDS = itertools.count(1)


def new_stream_id() -> int:
    return next(_STREAM_IDS)


@dataclass(frozen=True)
class StreamConfig:
    """Step size and endpointing shared by every stream (one pipeline batches them all).

    Every step re-encodes left + step + right seconds per stream and emits ``step`` seconds (NeMo
    calls it the chunk size). ``eou_ms``: with step 0.48 / right 0.48, a final comes ~1-1.4 s after
    the last word, and pauses inside a sentence shorter than ~1 s never split it (tokens are 80 ms
    frames). The defaults are the Settings' (STREAM_* variables)."""

    step_s: float
    left_s: float
    right_s: float
    eou_ms: int
    max_wait_ms: float = 15.0  # after the first ready stream, wait this long for others to batch

    @classmethod
    def from_settings(cls, s: Settings) -> StreamConfig:
        return cls(s.stream_step_s, s.stream_left_s, s.stream_right_s, s.stream_eou_ms)


def make_frame(
    samples: np.ndarray, stream_id: int, first: bool, last: bool, length: int, eou_ms: int | None = None, biasing=None
):
    """One fixed-size frame of a stream for ``transcribe_step``. ``length``: its true length (the
    last frame is zero-padded); the first frame carries the stream's options (end-of-utterance
    silence, hotword tree)."""
    from nemo.collections.asr.inference.streaming.framing.request import Frame
    from nemo.collections.asr.inference.streaming.framing.request_options import ASRRequestOptions

    options = None
    if first:
        options = (
            ASRRequestOptions() if eou_ms is None else ASRRequestOptions(stop_history_eou=eou_ms, biasing_cfg=biasing)
        )
    return Frame(
        samples=torch.from_numpy(np.ascontiguousarray(samples)),
        stream_id=stream_id,
        is_first=first,
        is_last=last,
        length=length if last else -1,
        options=options,
    )


def build_pipeline(engine, config: StreamConfig):
    """NeMo's buffered TDT pipeline around the engine's model (never a second copy).

    NeMo's builder can only load a model by name, so a wrapper subclass hands it ours, and fixes
    three things NeMo's wrapper does to a model it believes it owns:
    - it forces fp32 on CPU (``setup_device``): the engine's dtype is used instead, so PRECISION=bf16
      on CPU runs the GPU's casts (that is how the tests cover them);
    - it casts the whole model to the compute dtype: every floating tensor outside the encoder
      (the mel filterbank and window, decoder, joint) is put back bit for bit afterwards;
    - its encoder output (compute dtype) would reach the fp32 joint with autocast off (NeMo's
      CUDA-graph decoder disables it): it is cast to the joint's dtype, as the offline path does.
    It also resets the model's decoding strategy: the engine's offline set-up is re-applied
    afterwards, and the pipeline decodes through the decoding object built for it, never the
    model's offline one (each decoding computer replays only the graphs it captured itself)."""
    from nemo.collections.asr.inference.factory.buffered_pipeline_builder import BufferedPipelineBuilder
    from nemo.collections.asr.inference.model_wrappers.rnnt_inference_wrapper import RNNTInferenceWrapper
    from nemo.collections.asr.inference.pipelines.buffered_rnnt_pipeline import BufferedRNNTPipeline
    from omegaconf import OmegaConf

    from parakeet_worker.engine.nemo_patches import restore_tensors_outside

    c = config
    model = engine.model
    dtype_name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[engine.dtype]
    cuda_graphs = engine.device.type == "cuda" and engine.settings.cuda_graphs
    cfg = OmegaConf.create(
        {
            "pipeline_type": "buffered",
            "asr_decoding_type": "rnnt",
            "asr_output_granularity": "word",
            "enable_itn": False,
            "enable_nmt": False,
            "return_tail_result": False,
            "asr": {
                "model_name": "engine",
                "device": engine.device.type,
                "device_id": engine.device.index or 0,
                "compute_dtype": dtype_name,
                "use_amp": False,
                "decoding": {
                    "strategy": "greedy_batch",
                    "greedy": {
                        "max_symbols": 10,
                        "loop_labels": True,
                        "use_cuda_graph_decoder": cuda_graphs,
                        "enable_per_stream_biasing": True,
                    },
                },
            },
            "streaming": {
                "sample_rate": SAMPLE_RATE,
                "batch_size": engine.settings.max_batch_size,
                "stateful": True,
                "chunk_size": c.step_s,
                "left_padding_size": c.left_s,
                "right_padding_size": c.right_s,
                "request_type": "frame",
                "padding_mode": "right",
                "word_boundary_tolerance": 4,
            },
            "endpointing": {"stop_history_eou": c.eou_ms, "residue_tokens_at_end": 0},
            "confidence": {"exclude_blank": True, "aggregation": "min", "method_cfg": {"name": "max_prob"}},
            "itn": {"batch_size": 32, "n_jobs": 1, "left_padding_size": 4},
        }
    )

    class SharedModel(RNNTInferenceWrapper):
        def load_model(self, model_name, map_location):  # noqa: ARG002 - the engine's model
            return model.eval()

        def __post_init__(self):
            self.compute_dtype = engine.dtype
            with restore_tensors_outside(model, model.encoder):
                super().__post_init__()
            # the decoding object NeMo's set-up just made, kept: the pipeline's decoding computer
            # (and its CUDA graphs) belong to it, while the model's own ``decoding`` is replaced by
            # the engine's offline set-up right after (Engine.reconfigure)
            self.own_decoding = model.decoding

        def encode(self, *args, **kwargs):
            encoded, encoded_len = super().encode(*args, **kwargs)
            return encoded.to(engine.decode_dtype), encoded_len

        def decode(self, encoded, encoded_len, partial_hypotheses):
            return self.own_decoding.rnnt_decoder_predictions_tensor(
                encoded.to(engine.decode_dtype),
                encoded_len,
                return_hypotheses=True,
                partial_hypotheses=partial_hypotheses,
            )

    with engine.exclusive():
        wrapper = SharedModel(
            model_name="engine",
            decoding_cfg=BufferedPipelineBuilder.get_rnnt_decoding_cfg(cfg),
            device=cfg.asr.device,
            device_id=cfg.asr.device_id,
            compute_dtype=dtype_name,
            use_amp=False,
        )
        pipeline = BufferedRNNTPipeline(cfg, wrapper, itn_model=None, nmt_model=None)
        engine.reconfigure()
    log.info(
        "streaming pipeline: step %.2f s, left %.2f s, right %.2f s, EoU %d ms, %s",
        pipeline.chunk_size,
        pipeline.left_padding_size,
        pipeline.right_padding_size,
        c.eou_ms,
        engine.dtype,
    )
    return pipeline


def warm_streams(pipeline, n: int) -> None:
    """One step with ``n`` streams of near-silence, each first and last (their state is freed):
    the pipeline's decoder captures its CUDA graph for ``n`` streams before any client comes.
    The caller holds the engine (``Engine.exclusive``)."""
    size = int(round(pipeline.chunk_size * SAMPLE_RATE))
    rng = np.random.default_rng(0)
    frames = [
        make_frame((rng.standard_normal(size) * 1e-3).astype(np.float32), new_stream_id(), True, True, size)
        for _ in range(n)
    ]
    pipeline.transcribe_step(frames)
