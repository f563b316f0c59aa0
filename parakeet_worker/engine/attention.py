"""Full and local attention on one FastConformer encoder, switched by swapping module references.

NeMo's ``change_attention_model`` rebuilds every attention layer (fresh random init, on the CPU,
then a state-dict copy) on each call: about half a second to a second for the 0.6 B model, under
the engine lock, and a failure half-way leaves the encoder half converted. Here it runs once, the
first time local attention is wanted; its layers then share the full-attention layers' weights
(no second copy) and later switches only re-point the encoder's ``pos_enc`` and each layer's
``self_attn``: microseconds, and nothing that can fail half-way. If the one build fails, the
encoder gets its full-attention modules back before the error propagates.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

FULL, LOCAL = "full", "local"


@dataclass
class _ModuleSet:
    name: str  # NeMo's self_attention_model: rel_pos or rel_pos_local_attn
    context: list
    pos_enc: torch.nn.Module
    attns: list
    max_len: int  # the encoder's max_audio_length while this set was attached (pos_enc table size)


class AttentionModes:
    """Attach the full (as loaded) or local attention modules to ``encoder``."""

    def __init__(self, encoder, local_context: int):
        self.encoder = encoder
        self.local_context = int(local_context)
        self.current = FULL
        self.builds = 0  # how many times NeMo's rebuild ran (tests, gpu_check)
        self._sets = {FULL: self._capture()}

    def _layers(self) -> list:
        from nemo.collections.asr.parts.submodules.conformer_modules import ConformerLayer

        return [m for m in self.encoder.modules() if isinstance(m, ConformerLayer)]

    def _capture(self) -> _ModuleSet:
        enc = self.encoder
        return _ModuleSet(
            enc.self_attention_model,
            list(enc.att_context_size),
            enc.pos_enc,
            [layer.self_attn for layer in self._layers()],
            enc.max_audio_length,
        )

    def _attach(self, s: _ModuleSet) -> None:
        enc = self.encoder
        param = next(enc.parameters())
        enc.pos_enc = s.pos_enc
        enc.self_attention_model, enc.att_context_size, enc.max_audio_length = s.name, list(s.context), s.max_len
        for layer, attn in zip(self._layers(), s.attns):
            layer.self_attn = attn
            layer.self_attention_model = s.name
        # modules kept aside miss a later .to() of the encoder (e.g. another precision): follow it
        for mod in [s.pos_enc, *s.attns]:
            mod.to(device=param.device, dtype=param.dtype)

    def use(self, mode: str) -> None:
        if mode == self.current:
            return
        if mode not in (FULL, LOCAL):
            raise ValueError(f"unknown attention {mode!r}")
        self._sets[self.current].max_len = self.encoder.max_audio_length
        if mode not in self._sets:
            self._build_local()
        self._attach(self._sets[mode])
        self.current = mode

    def _build_local(self) -> None:
        enc = self.encoder
        full = self._sets[FULL]
        param = next(enc.parameters())
        sdpa = enc.use_pytorch_sdpa
        try:
            enc.use_pytorch_sdpa = False  # NeMo's local (Longformer) attention refuses SDPA
            enc.change_attention_model(
                "rel_pos_local_attn", [self.local_context, self.local_context], update_config=False, device=param.device
            )
            local = self._capture()
            with torch.no_grad():
                for full_attn, local_attn in zip(full.attns, local.attns):
                    local_attn.to(device=param.device, dtype=param.dtype)
                    shared = dict(full_attn.named_parameters())
                    for name, p in list(local_attn.named_parameters()):
                        owner, _, leaf = name.rpartition(".")
                        mod = local_attn.get_submodule(owner) if owner else local_attn
                        if name in shared and shared[name].shape == p.shape:
                            mod._parameters[leaf] = shared[name]  # one copy of the weights
                        else:
                            # NeMo builds biases even for use_bias=False encoders (parakeet) and
                            # loads the old weights non-strictly: they start random. Missing = zero.
                            p.zero_()
            local.pos_enc.to(device=param.device, dtype=param.dtype)
            self._sets[LOCAL] = local
            self.builds += 1
        finally:
            enc.use_pytorch_sdpa = sdpa
            self._attach(full)  # whatever happened, the encoder is whole again, on full attention
            self.current = FULL

    @contextlib.contextmanager
    def using(self, mode: str):
        """``mode`` for the duration of the block, full attention again afterwards."""
        self.use(mode)
        try:
            yield
        finally:
            self.use(FULL)
