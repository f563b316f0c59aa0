"""The CPU TDT loss used to train the test model, checked against independent references."""

import pytest
import torch

from tools.test_model.tdt_loss import tdt_loss

DURATIONS = [0, 1, 2, 3, 4]


def path_enumeration_nll(logits, labels, T, U, durations, blank, sigma=0.0):
    """-log P(y|x) by listing every alignment path: a sequence of (symbol, duration) steps that
    emits labels[:U] in order, never lands past frame T, and ends with a blank landing on T."""
    n_dur = len(durations)
    lp = torch.log_softmax(logits[..., :-n_dur], -1) - sigma
    dp = torch.log_softmax(logits[..., -n_dur:], -1)
    total = []

    def walk(t, u, acc):
        if t == T:
            return
        for n, d in enumerate(durations):
            # blank: must advance time; the path may end only by a blank that lands exactly on T
            if d > 0 and t + d <= T:
                step = acc + lp[t, u, blank] + dp[t, u, n]
                if t + d == T and u == U:
                    total.append(step)
                elif t + d < T:
                    walk(t + d, u, step)
            if u < U and t + d < T:
                walk(t + d, u + 1, acc + lp[t, u, labels[u]] + dp[t, u, n])

    walk(0, 0, torch.zeros((), dtype=logits.dtype))
    return -torch.logsumexp(torch.stack(total), 0)


def random_case(seed, B=3, T=6, U=3, V=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U + 1, V + 1 + len(DURATIONS), generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, (B, U), generator=g)
    act_lens = torch.tensor([T, T - 1, T - 2][:B])
    label_lens = torch.tensor([U, U - 1, 2][:B])
    return logits.requires_grad_(), labels, act_lens, label_lens, V


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sigma", [0.0, 0.05])
def test_matches_path_enumeration(seed, sigma):
    logits, labels, act_lens, label_lens, V = random_case(seed)
    ours = tdt_loss(logits, labels, act_lens, label_lens, DURATIONS, blank=V, sigma=sigma, reduction="none")
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    ref = torch.stack(
        [
            path_enumeration_nll(logits[b], labels[b], int(act_lens[b]), int(label_lens[b]), DURATIONS, V, sigma)
            for b in range(logits.shape[0])
        ]
    )
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-4, rtol=0)


def test_durations_without_zero_match_path_enumeration():
    durations = [1, 2, 3]
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(1, 7, 3, 4 + len(durations), generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[0, 2]])
    ours = tdt_loss(logits, labels, torch.tensor([7]), torch.tensor([2]), durations, blank=3, reduction="sum")
    ref = path_enumeration_nll(logits[0], labels[0], 7, 2, durations, 3)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_matches_nemo_reference(monkeypatch):
    """NeMo's own TDTLossPytorch, made to run on CPU by turning its hard-coded .cuda() into a no-op."""
    rnnt_pytorch = pytest.importorskip("nemo.collections.asr.losses.rnnt_pytorch")
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    logits, labels, act_lens, label_lens, V = random_case(3, T=5, U=3)
    logits32 = logits.detach().float().requires_grad_()
    nemo_loss = rnnt_pytorch.TDTLossPytorch(blank=V, durations=DURATIONS, reduction="sum", sigma=0.02)
    ref = nemo_loss(acts=logits32, labels=labels, act_lens=act_lens, label_lens=label_lens)
    (g_ref,) = torch.autograd.grad(ref, logits32)
    ours = tdt_loss(logits32, labels, act_lens, label_lens, DURATIONS, blank=V, sigma=0.02, reduction="sum")
    (g_ours,) = torch.autograd.grad(ours, logits32)
    torch.testing.assert_close(ours.float(), ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-4, rtol=0)


def test_loss_falls_when_training_on_one_example():
    """The loss is a usable training signal: a few steps of SGD on free logits reduce it."""
    logits, labels, act_lens, label_lens, V = random_case(5)
    logits = logits.detach().float().requires_grad_()
    opt = torch.optim.SGD([logits], lr=1.0)
    first = None
    for _ in range(30):
        loss = tdt_loss(logits, labels, act_lens, label_lens, DURATIONS, blank=V)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_rnnt_lattice_matches_nemo_rnnt_reference():
    """duration_logprobs=None is the plain RNN-T loss (what omega mixes in); checked against
    NeMo's CPU reference RNNTLossPytorch."""
    rnnt_pytorch = pytest.importorskip("nemo.collections.asr.losses.rnnt_pytorch")
    from tools.test_model.tdt_loss import tdt_log_likelihood

    g = torch.Generator().manual_seed(11)
    B, T, U, V = 2, 6, 3, 5
    logits = torch.randn(B, T, U + 1, V + 1, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (B, U), generator=g)
    act_lens, label_lens = torch.tensor([6, 5]), torch.tensor([3, 2])
    ref = rnnt_pytorch.RNNTLossPytorch(blank=V, reduction="sum")(
        acts=logits, labels=labels, act_lens=act_lens, label_lens=label_lens
    )
    (g_ref,) = torch.autograd.grad(ref, logits)
    ours = -tdt_log_likelihood(torch.log_softmax(logits, -1), None, labels, act_lens, label_lens, DURATIONS, V).sum()
    (g_ours,) = torch.autograd.grad(ours, logits)
    torch.testing.assert_close(ours.float(), ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-4, rtol=0)
