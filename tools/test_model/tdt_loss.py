"""A vectorized TDT (Token-and-Duration Transducer) loss that runs on CPU.

NeMo 3.0's ``tdt`` loss is CUDA-only and its PyTorch reference (``TDTLossPytorch``) loops over
batch, time and labels in Python and calls ``.cuda()``. We need the loss on CPU to train the
tiny test model, so this module computes the same quantity (TDT paper, eq. 7):

    alpha(t, u) = sum over d >= 1:  alpha(t-d, u)   * P(blank | t-d, u)     * P(d | t-d, u)
                + sum over d >= 0:  alpha(t-d, u-1) * P(y_u   | t-d, u-1)   * P(d | t-d, u-1)
    log P(y | x) = log sum over d >= 1: alpha(T-d, U) * P(blank | T-d, U) * P(d | T-d, U)

The recursion runs over time only. Arcs with duration 0 stay on the same frame and form a chain
over labels, alpha(t, u) = A(t, u) + alpha(t, u-1) * w(t, u-1), which is solved for all u at once:
with C(u) = sum_{j<u} log w(t, j),  log alpha(t, u) = C(u) + logcumsumexp_k<=u (log A(t, k) - C(k)).
The lattice runs in float64 so that this subtraction of large numbers keeps its precision.
Gradients come from autograd.
"""

from __future__ import annotations

import torch

# A finite "minus infinity": exp() of it is 0 in float64, and unlike -inf it never makes NaN
# gradients in logsumexp when every term of a sum is impossible.
_NEG = -1.0e30


def tdt_log_likelihood(
    label_logprobs: torch.Tensor,
    duration_logprobs: torch.Tensor | None,
    labels: torch.Tensor,
    act_lens: torch.Tensor,
    label_lens: torch.Tensor,
    durations: list[int],
    blank: int,
) -> torch.Tensor:
    """log P(labels | acoustics) for each utterance.

    label_logprobs: (B, T, U+1, V+1) log-probabilities over tokens and blank.
    duration_logprobs: (B, T, U+1, D) log-probabilities over ``durations``; None gives the
        standard RNN-T lattice (blank = one frame, labels stay), which ``omega`` mixes in.
    labels: (B, U) int64; entries past ``label_lens`` are ignored.
    Returns a (B,) tensor.
    """
    B, T, U1, _ = label_logprobs.shape
    if labels.shape[1] < U1 - 1:
        raise ValueError("labels are shorter than the lattice")
    dev = label_logprobs.device
    lab = labels[:, : U1 - 1].clamp(min=0)
    # Pad labels with blank for the last row u = U, whose label arcs are never used.
    lab = torch.cat([lab, torch.full((B, 1), blank, dtype=lab.dtype, device=dev)], dim=1)

    blank_lp = label_logprobs[..., blank].double()  # (B, T, U+1)
    tok_lp = label_logprobs.gather(3, lab[:, None, :, None].expand(B, T, U1, 1))[..., 0].double()
    if duration_logprobs is None:
        # Standard RNN-T: blank moves one frame on, a label stays on its frame.
        durations = [0, 1]
        neg = torch.full_like(blank_lp, _NEG)
        blank_arc = torch.stack([neg, blank_lp], dim=-1)
        label_arc = torch.stack([tok_lp, neg], dim=-1)
    else:
        dur_lp = duration_logprobs.double()  # (B, T, U+1, D)
        blank_arc = blank_lp[..., None] + dur_lp  # leaving (t, u) by blank with duration d
        label_arc = tok_lp[..., None] + dur_lp  # leaving (t, u) by label y_{u+1} with duration d
    return _lattice(blank_arc, label_arc, act_lens, label_lens, durations)


def _lattice(blank_arc, label_arc, act_lens, label_lens, durations: list[int]) -> torch.Tensor:
    """Forward algorithm over arc weights (B, T, U+1, D) for blank and label arcs of each duration."""
    B, T, U1, _ = blank_arc.shape
    dev = blank_arc.device
    zero_idx = durations.index(0) if 0 in durations else None
    neg_col = torch.full((B, 1), _NEG, dtype=torch.float64, device=dev)
    alphas: list[torch.Tensor] = []
    for t in range(T):
        terms = []
        if t == 0:
            start = torch.full((B, U1), _NEG, dtype=torch.float64, device=dev)
            start[:, 0] = 0.0
            terms.append(start)
        for n, d in enumerate(durations):
            if d <= 0 or t - d < 0:
                continue
            prev = alphas[t - d]
            terms.append(prev + blank_arc[:, t - d, :, n])
            from_below = prev[:, :-1] + label_arc[:, t - d, :-1, n]
            terms.append(torch.cat([neg_col, from_below], dim=1))
        a = torch.logsumexp(torch.stack(terms), dim=0) if len(terms) > 1 else terms[0]
        if zero_idx is not None:
            # Duration-0 label arcs inside frame t, solved for all u with one logcumsumexp.
            w = label_arc[:, t, :-1, zero_idx]
            c = torch.cat([torch.zeros_like(neg_col), torch.cumsum(w, dim=1)], dim=1)
            a = c + torch.logcumsumexp(a - c, dim=1)
        alphas.append(a)

    alpha = torch.stack(alphas, dim=1)  # (B, T, U+1)
    b_idx = torch.arange(B, device=dev)
    u_end = label_lens.long()
    finals = []
    for n, d in enumerate(durations):
        if d <= 0:
            continue
        t_from = act_lens.long() - d
        ok = t_from >= 0
        t_safe = t_from.clamp(min=0)
        val = alpha[b_idx, t_safe, u_end] + blank_arc[b_idx, t_safe, u_end, n]
        finals.append(torch.where(ok, val, torch.full_like(val, _NEG)))
    return torch.logsumexp(torch.stack(finals), dim=0)


def tdt_loss(
    joint_logits: torch.Tensor,
    labels: torch.Tensor,
    act_lens: torch.Tensor,
    label_lens: torch.Tensor,
    durations: list[int],
    blank: int,
    sigma: float = 0.0,
    reduction: str = "mean_volume",
    omega: float = 0.0,
) -> torch.Tensor:
    """TDT loss from raw joint outputs (B, T, U+1, V+1+D), as NeMo's ``tdt`` loss takes them.

    ``sigma`` is the paper's logit under-normalization (subtracted from token log-probs).
    Reductions follow NeMo: ``sum``, ``mean`` (per-utterance loss / label length, averaged),
    ``mean_batch`` and ``mean_volume`` (total loss / total labels).
    """
    n_dur = len(durations)
    label_lp = torch.log_softmax(joint_logits[..., :-n_dur], dim=-1) - sigma
    dur_lp = torch.log_softmax(joint_logits[..., -n_dur:], dim=-1)
    nll = -tdt_log_likelihood(label_lp, dur_lp, labels, act_lens, label_lens, durations, blank)
    if omega > 0:
        # NeMo's omega: mix in the plain RNN-T loss over the token outputs, which sharpens
        # per-frame token posteriors (what greedy decoding looks at).
        rnnt = -tdt_log_likelihood(label_lp + sigma, None, labels, act_lens, label_lens, durations, blank)
        nll = (1 - omega) * nll + omega * rnnt
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    if reduction == "mean":
        return (nll / label_lens.clamp(min=1).to(nll.dtype)).mean()
    if reduction == "mean_batch":
        return nll.mean()
    if reduction == "mean_volume":
        return nll.sum() / label_lens.sum().clamp(min=1).to(nll.dtype)
    raise ValueError(f"unknown reduction {reduction!r}")
