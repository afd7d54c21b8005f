"""Every reparameterisation rule is exact: merged output equals the unmerged chain within 1e-5 relative."""

import pytest
import torch
from torch import nn

from minillm.prune import reparam

RTOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).detach())


def trained_bn(bn: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """A BN with non-trivial affine parameters and running statistics, in eval mode."""
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    bn.train()
    for _ in range(3):
        bn(torch.randn(shape) * 2 + 0.7)
    return bn.eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_fuse_conv_bn_exact():
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    bn = trained_bn(nn.BatchNorm2d(8), (16, 8, 5, 5))
    x = torch.randn(4, 3, 11, 11)
    fused = reparam.fuse_conv_bn(conv, bn)
    assert rel_err(fused(x), bn(conv(x))) < RTOL


def test_fuse_conv_bn_without_conv_bias():
    conv = nn.Conv2d(3, 8, 1, bias=False)
    bn = trained_bn(nn.BatchNorm2d(8), (16, 8, 5, 5))
    x = torch.randn(4, 3, 6, 6)
    assert rel_err(reparam.fuse_conv_bn(conv, bn)(x), bn(conv(x))) < RTOL


def test_fuse_linear_bn_and_bn_linear_exact():
    fc = nn.Linear(12, 20)
    bn_after = trained_bn(nn.BatchNorm1d(20), (32, 20))
    bn_before = trained_bn(nn.BatchNorm1d(12), (32, 12))
    x = torch.randn(7, 12)
    assert rel_err(reparam.fuse_linear_bn(fc, bn_after)(x), bn_after(fc(x))) < RTOL
    assert rel_err(reparam.fuse_bn_linear(bn_before, fc)(x), fc(bn_before(x))) < RTOL


def test_merge_linears_and_identity_exact():
    fc1, fc2 = nn.Linear(10, 40), nn.Linear(40, 10)
    x = torch.randn(5, 10)
    merged = reparam.merge_linears(fc1, fc2)
    assert rel_err(merged(x), fc2(fc1(x))) < RTOL
    assert rel_err(reparam.add_identity_linear(merged)(x), x + fc2(fc1(x))) < RTOL
    assert merged.weight.shape == (10, 10)


def test_merge_1x1_kxk_padding_on_first_conv_exact():
    """The UPDP layout: padding moved to the 1×1 conv, the k×k conv pads nothing."""
    conv1 = nn.Conv2d(4, 9, 1, padding=1)  # bias is non-zero
    conv2 = nn.Conv2d(9, 6, 3, padding=0, stride=2)  # stride on the last conv
    x = torch.randn(3, 4, 9, 9)
    merged = reparam.merge_1x1_kxk(conv1, conv2)
    assert merged.kernel_size == (3, 3) and merged.padding == (1, 1) and merged.stride == (2, 2)
    assert rel_err(merged(x), conv2(conv1(x))) < RTOL


def test_merge_1x1_kxk_zero_bias_allows_padding_on_second():
    conv1 = nn.Conv2d(4, 9, 1, bias=False)
    conv2 = nn.Conv2d(9, 6, 5, padding=2)
    x = torch.randn(2, 4, 8, 8)
    assert rel_err(reparam.merge_1x1_kxk(conv1, conv2)(x), conv2(conv1(x))) < RTOL


def test_merge_1x1_kxk_refuses_inexact_padding():
    """Zero padding after a biased 1×1 conv is not what the merged conv would pad: refuse, name the fix."""
    conv1 = nn.Conv2d(4, 9, 1)
    conv2 = nn.Conv2d(9, 6, 3, padding=1)
    with pytest.raises(ValueError, match="move the padding"):
        reparam.merge_1x1_kxk(conv1, conv2)
    # and the refusal is warranted: the naive merge really differs at the border
    naive = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        naive.weight.copy_(torch.einsum("omhw,mi->oihw", conv2.weight, conv1.weight[:, :, 0, 0]))
        naive.bias.copy_(conv2.bias + torch.einsum("omhw,m->o", conv2.weight, conv1.bias))
    x = torch.randn(2, 4, 8, 8)
    assert rel_err(naive(x), conv2(conv1(x))) > 1e-3


def test_merge_1x1_kxk_refuses_stride_on_first():
    with pytest.raises(ValueError, match="stride"):
        reparam.merge_1x1_kxk(nn.Conv2d(4, 9, 1, stride=2), nn.Conv2d(9, 6, 3))


def test_identity_into_conv_repvgg_exact():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    x = torch.randn(2, 8, 7, 7)
    assert rel_err(reparam.add_identity_conv(conv)(x), x + conv(x)) < RTOL
    eye = nn.Conv2d(8, 8, 5, padding=2, bias=False)
    with torch.no_grad():
        eye.weight.copy_(reparam.identity_kernel(8, 5))
    assert torch.equal(eye(x), x)


def test_add_identity_conv_rejects_bad_shapes():
    with pytest.raises(ValueError, match="C_in = C_out"):
        reparam.add_identity_conv(nn.Conv2d(8, 4, 3, padding=1))
    with pytest.raises(ValueError, match="odd"):
        reparam.identity_kernel(4, 2)


def test_add_branches_exact():
    """RepVGG's three branches (3×3, 1×1, and identity as a conv) become one 3×3 conv."""
    c3, c1 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1, padding=0)
    ident = nn.Conv2d(6, 6, 1, bias=False)
    with torch.no_grad():
        ident.weight.copy_(reparam.identity_kernel(6, 1))
    x = torch.randn(3, 6, 8, 8)
    merged = reparam.add_branches(c3, c1, ident)
    assert merged.kernel_size == (3, 3)
    assert rel_err(merged(x), c3(x) + c1(x) + x) < RTOL


def test_add_branches_rejects_misaligned_padding():
    with pytest.raises(ValueError, match="k//2"):
        reparam.add_branches(nn.Conv2d(3, 3, 3, padding=0), nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="at least one"):
        reparam.add_branches()


@pytest.mark.parametrize("call", [
    lambda: reparam.fuse_conv_bn(nn.Linear(3, 3), nn.BatchNorm2d(3)),
    lambda: reparam.fuse_conv_bn(nn.Conv2d(3, 3, 1), nn.LayerNorm(3)),
    lambda: reparam.fuse_linear_bn(nn.Linear(3, 3), nn.GroupNorm(1, 3)),
    lambda: reparam.merge_linears(nn.Linear(3, 3), nn.Conv2d(3, 3, 1)),
    lambda: reparam.merge_1x1_kxk(nn.Conv1d(3, 3, 1), nn.Conv2d(3, 3, 3)),
])
def test_unsupported_module_types_raise(call):
    with pytest.raises(TypeError, match="must be one of"):
        call()


def test_grouped_conv_and_stateless_bn_raise():
    with pytest.raises(ValueError, match="groups=1"):
        reparam.fuse_conv_bn(nn.Conv2d(4, 4, 3, groups=4), nn.BatchNorm2d(4).eval())
    with pytest.raises(ValueError, match="track_running_stats"):
        reparam.fuse_conv_bn(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="expects"):
        reparam.merge_linears(nn.Linear(3, 4), nn.Linear(5, 3))
