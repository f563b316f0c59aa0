"""Changes to NeMo 3.0's modules that the engine applies to its loaded model.

Each fixes a measured cost or a NeMo behaviour that would change results; each keeps the model's
output what NeMo's own code computes (tests/test_engine.py compares them).
"""

from __future__ import annotations

import contextlib
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
# NeMo's streaming wrapper casts the whole model it is given
@contextlib.contextmanager
def restore_tensors_outside(model, keep: torch.nn.Module):
    """Put back, bit for bit, every floating parameter and buffer of ``model`` outside ``keep``
    after the block (which may cast the whole model). Casting back would not do: the mel
    filterbank and window would stay bf16-rounded for the life of the worker. The originals are
    kept by reference (parameters' data, buffers' tensors), so nothing is copied."""
    inside = {id(m) for m in keep.modules()}
    saved = []
    for mod in model.modules():
        if id(mod) in inside:
            continue
        for name, p in mod._parameters.items():
            if p is not None and p.is_floating_point():
                saved.append((mod, "p", name, p, p.data))
        for name, b in mod._buffers.items():
            if b is not None and b.is_floating_point():
                saved.append((mod, "b", name, b, b))
    try:
        yield
    finally:
        with torch.no_grad():
            for mod, kind, name, obj, data in saved:
                if kind == "p":
                    mod._parameters[name] = obj
                    obj.data = data
                else:
                    mod._buffers[name] = data


# ---------------------------------------------------------------------------------------------
# torch.compile (TORCH_COMPILE=1)
def compile_encoder(encoder) -> None:
    """Compile the encoder's computation. Off by default: no GPU measurement has shown a gain yet
    (bench/gpu_check.sh measures it). ``forward_internal`` is compiled, below NeMo's type-checking
    ``forward`` (its checks graph-break), with torch's automatic dynamic shapes: the second length
    or batch size seen (at warmup) compiles one shape-generic graph instead of one per shape."""
    encoder.forward_internal = torch.compile(encoder.forward_internal)
