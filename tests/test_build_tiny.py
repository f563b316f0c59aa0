"""The test-model builder's training speedup changes speed only: the first subsampling
convolution on ATen's im2col path gives oneDNN's outputs and gradients."""

import torch

from tools.test_model import build_tiny


def test_im2col_conv_matches_onednn_conv():
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(1, 16, kernel_size=3, stride=2, padding=1)
    fast = torch.nn.Conv2d(1, 16, kernel_size=3, stride=2, padding=1)
    fast.load_state_dict(ref.state_dict())
    fast.__class__ = build_tiny._Im2colConv2d
    x = torch.randn(2, 1, 37, 24)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    weights = torch.randn(2, 16, 19, 12)  # a loss that weighs each output differently
    y_ref, y_fast = ref(x_ref), fast(x_fast)
    (y_ref * weights).sum().backward()
    (y_fast * weights).sum().backward()
    assert y_fast.shape == y_ref.shape
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in ((x_fast.grad, x_ref.grad), (fast.weight.grad, ref.weight.grad), (fast.bias.grad, ref.bias.grad)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert torch.backends.mkldnn.enabled  # the global switch is restored


def test_fast_first_conv_swaps_only_the_one_channel_conv_and_back():
    class Pre(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Sequential(
                torch.nn.Conv2d(1, 4, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, 2, 1, groups=4)
            )

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Module()
            self.encoder.pre_encode = Pre()

    m = Model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    build_tiny._fast_first_conv(m, True)
    assert type(m.encoder.pre_encode.conv[0]) is build_tiny._Im2colConv2d
    assert type(m.encoder.pre_encode.conv[2]) is torch.nn.Conv2d  # depthwise stays on oneDNN
    build_tiny._fast_first_conv(m, False)
    assert type(m.encoder.pre_encode.conv[0]) is torch.nn.Conv2d
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
