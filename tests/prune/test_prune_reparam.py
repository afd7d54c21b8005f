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


def test_stateless_bn_and_mismatched_layers_raise():
    with pytest.raises(ValueError, match="track_running_stats"):
        reparam.fuse_conv_bn(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="expects"):
        reparam.merge_linears(nn.Linear(3, 4), nn.Linear(5, 3))
    with pytest.raises(ValueError, match="normalises 6 channels but the conv's output has 4"):
        reparam.fuse_conv_bn(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(6).eval())


# ---- grouped and depthwise convolutions ------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [2, 8])  # grouped, and depthwise (groups = channels)
def test_fuse_grouped_and_depthwise_conv_bn_exact(groups):
    conv = nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=groups)
    bn = trained_bn(nn.BatchNorm2d(8), (16, 8, 5, 5))
    x = torch.randn(4, 8, 11, 11)
    fused = reparam.fuse_conv_bn(conv, bn)
    assert fused.groups == groups and fused.weight.shape == conv.weight.shape
    assert rel_err(fused(x), bn(conv(x))) < RTOL


def test_fuse_dilated_conv_bn_exact():
    conv = nn.Conv2d(4, 6, 3, padding=2, dilation=2)
    bn = trained_bn(nn.BatchNorm2d(6), (16, 6, 5, 5))
    x = torch.randn(2, 4, 9, 9)
    assert rel_err(reparam.fuse_conv_bn(conv, bn)(x), bn(conv(x))) < RTOL


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_dense_weight_is_the_grouped_conv(groups):
    conv = nn.Conv2d(6, 12, 3, padding=1, groups=groups)
    dense = nn.Conv2d(6, 12, 3, padding=1)
    with torch.no_grad():
        dense.weight.copy_(reparam.dense_weight(conv))
        dense.bias.copy_(conv.bias)
    x = torch.randn(2, 6, 7, 7)
    assert rel_err(dense(x), conv(x)) < RTOL
    assert reparam.is_depthwise(nn.Conv2d(6, 6, 3, groups=6)) and not reparam.is_depthwise(conv)


def test_merge_1x1_into_depthwise_kxk_exact():
    """1×1 (C_in → C) then depthwise k×k: K[o, i] = D[o]·W₁[o, i], a dense k×k conv (padding on the 1×1)."""
    conv1 = nn.Conv2d(4, 10, 1, padding=2)
    dw = nn.Conv2d(10, 10, 5, padding=0, groups=10)
    x = torch.randn(3, 4, 9, 9)
    merged = reparam.merge_1x1_kxk(conv1, dw)
    assert merged.groups == 1 and merged.weight.shape == (10, 4, 5, 5) and merged.padding == (2, 2)
    assert rel_err(merged(x), dw(conv1(x))) < RTOL


def test_merge_depthwise_1x1_into_depthwise_kxk_stays_depthwise():
    conv1 = nn.Conv2d(6, 6, 1, padding=1, groups=6)  # a per-channel scale and shift
    dw = nn.Conv2d(6, 6, 3, padding=0, stride=2, groups=6)
    x = torch.randn(2, 6, 9, 9)
    merged = reparam.merge_1x1_kxk(conv1, dw)
    assert reparam.is_depthwise(merged) and merged.stride == (2, 2)
    assert rel_err(merged(x), dw(conv1(x))) < RTOL


def test_merge_1x1_into_padded_depthwise_kxk_is_refused_and_would_be_wrong():
    conv1, dw = nn.Conv2d(4, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6)
    with pytest.raises(ValueError, match="move the padding"):
        reparam.merge_1x1_kxk(conv1, dw)
    naive = nn.Conv2d(4, 6, 3, padding=1)  # the formula applied regardless of the padding
    with torch.no_grad():
        naive.weight.copy_(torch.einsum("omhw,mi->oihw", reparam.dense_weight(dw), conv1.weight[:, :, 0, 0]))
        naive.bias.copy_(dw.bias + dw.weight.sum(dim=(1, 2, 3)) * conv1.bias)
    x = torch.randn(2, 4, 8, 8)
    assert rel_err(naive(x), dw(conv1(x))) > 1e-3


@pytest.mark.parametrize("groups_k, groups_1", [(8, 1), (1, 1), (2, 2)])
def test_merge_kxk_then_1x1_exact_for_any_padding_and_stride(groups_k, groups_1):
    """ConvNeXt's order: depthwise (or any) k×k with its own padding and stride, then a 1×1."""
    conv_k = nn.Conv2d(8, 8, 5, padding=2, stride=2, groups=groups_k)
    conv_1 = nn.Conv2d(8, 12, 1, groups=groups_1)
    x = torch.randn(2, 8, 11, 11)
    merged = reparam.merge_kxk_1x1(conv_k, conv_1)
    assert merged.weight.shape == (12, 8, 5, 5) and merged.padding == (2, 2) and merged.stride == (2, 2)
    assert rel_err(merged(x), conv_1(conv_k(x))) < RTOL


def test_merge_kxk_then_strided_1x1_multiplies_the_stride():
    conv_k, conv_1 = nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.Conv2d(6, 5, 1, stride=2)
    x = torch.randn(2, 4, 13, 13)
    merged = reparam.merge_kxk_1x1(conv_k, conv_1)
    assert merged.stride == (4, 4)
    assert rel_err(merged(x), conv_1(conv_k(x))) < RTOL


def test_merge_kxk_then_padded_1x1_is_refused():
    with pytest.raises(ValueError, match="without padding"):
        reparam.merge_kxk_1x1(nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, 5, 1, padding=1))
    with pytest.raises(ValueError, match="gives 6 channels but conv2 expects 7"):
        reparam.merge_kxk_1x1(nn.Conv2d(4, 6, 3), nn.Conv2d(7, 5, 1))


@pytest.mark.parametrize("groups", [2, 6])
def test_identity_into_grouped_and_depthwise_conv_exact(groups):
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=groups)
    x = torch.randn(2, 6, 7, 7)
    merged = reparam.add_identity_conv(conv)
    assert merged.groups == groups
    assert rel_err(merged(x), x + conv(x)) < RTOL


def test_depthwise_branches_add_exactly_and_mismatched_groups_are_refused():
    """A depthwise RepVGG-style block: dw 3×3 + dw 1×1 + identity, all per channel, one dw 3×3."""
    c3, c1 = nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.Conv2d(6, 6, 1, groups=6)
    x = torch.randn(2, 6, 8, 8)
    merged = reparam.add_identity_conv(reparam.add_branches(c3, c1))
    assert reparam.is_depthwise(merged)
    assert rel_err(merged(x), c3(x) + c1(x) + x) < RTOL
    with pytest.raises(ValueError, match="same channels, groups and stride"):
        reparam.add_branches(c3, nn.Conv2d(6, 6, 1))


def test_inexact_conv_options_are_refused():
    with pytest.raises(ValueError, match="padding_mode='zeros'"):
        reparam.fuse_conv_bn(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(4).eval())
    with pytest.raises(ValueError, match="dilation"):
        reparam.merge_1x1_kxk(nn.Conv2d(4, 4, 1, padding=2), nn.Conv2d(4, 4, 3, dilation=2))
    with pytest.raises(ValueError, match="padding as numbers"):
        reparam.add_identity_conv(nn.Conv2d(4, 4, 3, padding="same"))
