"""What chapter 6 re-derives inline computes exactly what minillm.prune computes."""

import torch
from torch import nn

from minillm.prune import ProgressiveAct, reparam
from notebook_utils import exec_tagged_cells

NOTEBOOK = "book/ch06_updp.ipynb"


def _bn(channels):
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    for _ in range(3):
        bn(torch.randn(16, channels, 5, 5) * 2 + 0.5)
    return bn.eval()


def test_notebook_fuse_conv_bn_equals_package():
    ns = exec_tagged_cells(NOTEBOOK)
    for conv in (nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(3, 8, 1, bias=False),
                 nn.Conv2d(8, 8, 3, padding=1, groups=8)):  # depthwise: the BN scales each filter alike
        bn = _bn(8)
        ours, pkg = ns["fuse_conv_bn"](conv, bn), reparam.fuse_conv_bn(conv, bn)
        torch.testing.assert_close(ours.weight, pkg.weight)
        torch.testing.assert_close(ours.bias, pkg.bias)
        x = torch.randn(2, conv.in_channels, 9, 9)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), pkg(x))


def test_notebook_progressive_act_equals_package():
    ns = exec_tagged_cells(NOTEBOOK)
    x = torch.randn(4, 7, 5)
    for act in ("gelu", "relu"):
        for lam in (0.0, 0.3, 0.5, 1.0):
            torch.testing.assert_close(ns["ProgressiveAct"](act)(x, lam), ProgressiveAct(act)(x, lam), rtol=0, atol=0)
