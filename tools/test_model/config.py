"""Model configs with the structure of parakeet-tdt-0.6b-v3's own ``model_config.yaml``.

The same function gives the tiny test model and the full-size v3 shape, so both take the code path
the real checkpoint takes: EncDecRNNTBPEModel, FastConformer (dw_striding x8, 128 mels, rel_pos),
RNNT decoder, TDT joint with durations [0..4], SentencePiece BPE tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

DURATIONS = [0, 1, 2, 3, 4]


@dataclass(frozen=True)
class Shape:
    d_model: int
    n_layers: int
    n_heads: int
    ff_expansion: int
    conv_kernel: int
    subsampling_channels: int
    pred_hidden: int
    pred_layers: int
    joint_hidden: int
    dropout: float


# parakeet-tdt-0.6b-v3: 24 x 1024 FastConformer, 2-layer 640 LSTM prediction net, 640 joint.
FULL = Shape(1024, 24, 8, 4, 9, 256, 640, 2, 640, 0.1)
# The test model: the same layout, small enough to train on 2 CPU cores and commit to git.
TINY = Shape(176, 4, 4, 4, 9, 128, 192, 1, 192, 0.0)


def parakeet_config(shape: Shape, tokenizer_dir: str) -> OmegaConf:
    cfg = {
        "sample_rate": 16000,
        "compute_eval_loss": False,
        "log_prediction": False,
        "rnnt_reduction": "mean_volume",
        "skip_nan_grad": False,
        "model_defaults": {
            "enc_hidden": shape.d_model,
            "pred_hidden": shape.pred_hidden,
            "joint_hidden": shape.joint_hidden,
            "tdt_durations": DURATIONS,
            "num_tdt_durations": len(DURATIONS),
        },
        "train_ds": None,
        "validation_ds": {
            "manifest_filepath": None,
            "sample_rate": 16000,
            "batch_size": 16,
            "shuffle": False,
            "use_start_end_token": False,
            "num_workers": 0,
            "pin_memory": False,
        },
        "test_ds": None,
        "tokenizer": {"dir": tokenizer_dir, "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000,
            "normalize": "per_feature",
            "window_size": 0.025,
            "window_stride": 0.01,
            "window": "hann",
            "features": 128,
            "n_fft": 512,
            "log": True,
            "frame_splicing": 1,
            "dither": 1.0e-05,
            "pad_to": 0,
            "pad_value": 0.0,
        },
        "spec_augment": {
            "_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
            "freq_masks": 2,
            "time_masks": 2,
            "freq_width": 27,
            "time_width": 0.05,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 128,
            "feat_out": -1,
            "n_layers": shape.n_layers,
            "d_model": shape.d_model,
            "use_bias": False,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": shape.subsampling_channels,
            "causal_downsampling": False,
            "ff_expansion_factor": shape.ff_expansion,
            "self_attention_model": "rel_pos",
            "n_heads": shape.n_heads,
            "att_context_size": [-1, -1],
            "att_context_style": "regular",
            "xscaling": False,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": shape.conv_kernel,
            "conv_norm_type": "batch_norm",
            "conv_context_size": None,
            "dropout": shape.dropout,
            "dropout_pre_encoder": shape.dropout,
            "dropout_emb": 0.0,
            "dropout_att": shape.dropout,
            "stochastic_depth_drop_prob": 0.0,
            "stochastic_depth_mode": "linear",
            "stochastic_depth_start_layer": 1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {
                "pred_hidden": shape.pred_hidden,
                "pred_rnn_layers": shape.pred_layers,
                "t_max": None,
                "dropout": shape.dropout,
            },
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "fused_batch_size": 4,
            "num_extra_outputs": len(DURATIONS),
            "jointnet": {
                "joint_hidden": shape.joint_hidden,
                "activation": "relu",
                "dropout": shape.dropout,
                "num_extra_outputs": len(DURATIONS),
            },
        },
        "decoding": {
            "strategy": "greedy_batch",
            "model_type": "tdt",
            "durations": DURATIONS,
            "greedy": {"max_symbols": 10},
            "beam": {"beam_size": 2, "return_best_hypothesis": False, "score_norm": True, "tsl_alpha": 0.5},
        },
        "loss": {
            "loss_name": "tdt",
            "tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0, "durations": DURATIONS, "sigma": 0.02, "omega": 0.1},
        },
        "optim": {
            "name": "adamw",
            "lr": 1.0e-3,
            "betas": [0.9, 0.98],
            "weight_decay": 1.0e-3,
            "sched": {"name": "CosineAnnealing", "warmup_steps": 500, "min_lr": 1.0e-5},
        },
    }
    return OmegaConf.create(cfg)
