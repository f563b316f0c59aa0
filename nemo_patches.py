"""Changes to NeMo 3.0's modules that the engine applies to its loaded model.

Each fixes a measured cost or a NeMo behaviour that would change results; each keeps the model's
output what NeMo's own code computes (tests/test_engine.py compares them).
"""

from __future__ import annotations

import types

import torch


# ---------------------------------------------------------------------------------------------
# leaner padding masks in the subsampling convolutions (bench/profile_bench.py: 16% of a CPU batch)
def lean_subsampling_masks(model) -> int:
    """Give the encoder's masked subsampling convolutions (NeMo 3.0's MaskedConvSequential) a
    forward with the same output and fewer passes over the activations. NeMo zeroes padded frames
    before every layer; only layers that mix neighbouring frames need those zeros, the final
    mask zeroes the padded outputs as before, and on CPU an unpadded batch needs no mask at all.
    Returns how many modules were changed (0 on NeMo versions without that class)."""
    try:
        from nemo.collections.asr.parts.submodules.subsampling import MaskedConvSequential
    except ImportError:
        return 0
    changed = 0
    for mod in model.modules():
        if isinstance(mod, MaskedConvSequential):
            mod.forward = types.MethodType(_masked_conv_forward, mod)
            changed += 1
    return changed


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    time = x.shape[2]  # (batch, channels, time, features)
    if not x.is_cuda and bool((lengths >= time).all()):  # nothing padded (a GPU sync is not worth it)
        return x
    keep = torch.arange(time, device=x.device)[None, :] < lengths[:, None]
    return x * keep[:, None, :, None].to(x.dtype)


def _masked_conv_forward(self, x: torch.Tensor, lengths: torch.Tensor):
    from nemo.collections.asr.parts.submodules.subsampling import calculate_conv_output_size

    x = x.unsqueeze(1)  # (batch, 1, time, features)
    current = lengths.clone().float()  # NeMo's length arithmetic, kept identical
    for layer in self:
        if getattr(layer, "kernel_size", (1,))[0] > 1:  # mixes neighbouring frames: padding must be zero
            x = _zero_padding(x, current.long())
        x = layer(x)
        if getattr(layer, "stride", (1, 1)) != (1, 1):
            padding = (layer._left_padding, layer._right_padding) if hasattr(layer, "_left_padding") else layer.padding
            current = calculate_conv_output_size(current, layer.kernel_size[0], layer.stride[0], padding)
    return _zero_padding(x, current.long()), current.long()


# ---------------------------------------------------------------------------------------------
# attention switches
def zero_added_biases(model, known_parameters: set[str]) -> None:
    """After ``change_attention_model``: zero every bias the checkpoint did not have.

    NeMo 3.0 builds the new attention layers with biases even when the encoder has
    use_bias=False (parakeet's case) and loads the old weights non-strictly, so those biases
    start random and would change every later request. A missing bias is a zero bias."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in known_parameters and name.endswith(".bias"):
                p.zero_()
