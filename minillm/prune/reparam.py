"""Structural reparameterisation: rewrite a chain of *linear* layers as one layer with the same output.

Every rule here is an identity between affine maps, exact up to float rounding (eval mode):

* conv + BN:   ``BN(W*x + b) = (γ/σ)·W*x + (γ/σ)(b − μ) + β``  with ``σ = sqrt(var + eps)``; the scale is per
  *output* channel, so the rule holds unchanged for grouped and depthwise convs (``groups > 1``)
* FC + BN:     the same rule with ``W`` a matrix; BN + FC:  ``W(a⊙x + c) + b = (W·diag a)x + (Wc + b)``
* FC → FC:     ``W₂(W₁x + b₁) + b₂ = (W₂W₁)x + (W₂b₁ + b₂)``
* 1×1 → k×k:   ``K[o,i] = Σ_m W₂[o,m]·W₁[m,i]`` (a k×k kernel), bias ``b₂ + Σ W₂·b₁``.  Exact when the k×k conv
  does not pad (move the padding to the 1×1 conv: its padded border then holds ``b₁``, exactly what the
  merged conv sees), or when the 1×1 conv has no bias (zero border on both sides). A depthwise k×k is the
  block-diagonal dense kernel ``W₂[o,m] = δ_om·D[o]``, so 1×1 → depthwise k×k gives ``K[o,i] = D[o]·W₁[o,i]``.
* k×k → 1×1:   ``K[o,i] = Σ_m W₁ₓ₁[o,m]·W_k[m,i]``, bias ``W₁ₓ₁ b_k + b₁ₓ₁``, exact for *any* padding and
  stride of the k×k conv: a 1×1 conv acts on every output pixel separately (ConvNeXt's depthwise → pointwise).
* identity → conv (RepVGG): ``x = conv(x, I)`` with ``I`` a one at the kernel centre of channel ``o→o``
  (for a grouped conv, at position ``o mod (C/groups)`` of its group's input channels).
* branch addition: ``conv(x, K₁) + conv(x, K₂) = conv(x, K₁ + K₂)`` after zero-padding the smaller kernel
  to the larger size (both branches must have "same" padding ``k//2``).

A grouped conv is a dense conv whose kernel is block-diagonal (:func:`dense_weight`); merging two convs
through a grouped one gives a dense kernel unless both are depthwise, where the product stays depthwise.

Defined in chapter 6 (UPDP depth pruning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _check(module: nn.Module, kinds: tuple[type, ...], role: str) -> None:
    if not isinstance(module, kinds):
        names = ", ".join(k.__name__ for k in kinds)
        raise TypeError(f"{role} must be one of ({names}), got {type(module).__name__}; "
                        "only these linear layers can be merged by reparameterisation.")


def _bn_scale_shift(bn: nn.Module, channels: int, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """BN in eval mode as ``a⊙x + c``: returns ``(a, c)``, both (C,)."""
    _check(bn, _BN, "the normalisation layer")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be "
                         "fused: its output depends on the batch. Build it with track_running_stats=True.")
    if bn.num_features != channels:
        raise ValueError(f"the BatchNorm normalises {bn.num_features} channels but {role} has {channels}; "
                         "fuse each BN with the layer whose channels it normalises.")
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    a = gamma / std
    return a, beta - a * bn.running_mean


def _bias(layer: nn.Module, n: int) -> torch.Tensor:
    return layer.bias.detach() if layer.bias is not None else layer.weight.new_zeros(n)


def _new_conv(ref: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, padding, stride, groups: int = 1,
              dilation=(1, 1)) -> nn.Conv2d:
    out_c, in_per_group, kh, kw = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_c, (kh, kw), stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=True)
    conv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


def _conv(conv: nn.Module, role: str, dilation: bool = False) -> None:
    """A zero-padded ``nn.Conv2d`` (any groups); dilation 1 unless the rule allows it."""
    _check(conv, (nn.Conv2d,), role)
    if conv.padding_mode != "zeros":
        raise ValueError(f"{role}: padding_mode={conv.padding_mode!r} pads with copies of the input, which no "
                         "merged kernel reproduces; build the conv with padding_mode='zeros'.")
    if isinstance(conv.padding, str):
        raise ValueError(f"{role}: padding={conv.padding!r}; give the padding as numbers (e.g. k//2) so the "
                         "merged conv can add it up.")
    if not dilation and conv.dilation != (1, 1):
        raise ValueError(f"{role}: dilation={conv.dilation} is not supported by this rule; use dilation=1.")


def is_depthwise(conv: nn.Conv2d) -> bool:
    """One filter per channel: ``groups == C_in == C_out``."""
    _check(conv, (nn.Conv2d,), "conv")
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


@torch.no_grad()
def dense_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The (C_out, C_in, k, k) dense kernel of a grouped conv: block-diagonal, zero across groups."""
    _check(conv, (nn.Conv2d,), "conv")
    g = conv.groups
    out_g, in_g = conv.out_channels // g, conv.in_channels // g
    dense = conv.weight.new_zeros(conv.out_channels, conv.in_channels, *conv.kernel_size)
    for j in range(g):  # group j maps input channels [j·in_g, (j+1)·in_g) to outputs [j·out_g, (j+1)·out_g)
        dense[j * out_g:(j + 1) * out_g, j * in_g:(j + 1) * in_g] = conv.weight[j * out_g:(j + 1) * out_g]
    return dense


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One conv equal to ``bn(conv(x))`` in eval mode (padding, stride, dilation and groups are kept)."""
    _conv(conv, "conv", dilation=True)
    _check(bn, (nn.BatchNorm2d,), "bn")
    a, c = _bn_scale_shift(bn, conv.out_channels, "the conv's output")  # (C_out,)
    weight = conv.weight * a[:, None, None, None]  # (C_out, C_in/groups, k, k): one scale per output filter
    bias = a * _bias(conv, conv.out_channels) + c
    return _new_conv(conv, weight, bias, conv.padding, conv.stride, conv.groups, conv.dilation)


@torch.no_grad()
def fuse_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """One linear layer equal to ``bn(linear(x))`` in eval mode."""
    _check(linear, (nn.Linear,), "linear")
    _check(bn, (nn.BatchNorm1d,), "bn")
    a, c = _bn_scale_shift(bn, linear.out_features, "the linear layer's output")  # (out,)
    return _new_linear(linear.weight * a[:, None], a * _bias(linear, linear.out_features) + c)


@torch.no_grad()
def fuse_bn_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """One linear layer equal to ``linear(bn(x))`` in eval mode (BN *before* the FC, as in a pre-norm MLP)."""
    _check(bn, (nn.BatchNorm1d,), "bn")
    _check(linear, (nn.Linear,), "linear")
    a, c = _bn_scale_shift(bn, linear.in_features, "the linear layer's input")  # (in,)
    return _new_linear(linear.weight * a[None, :], linear.weight @ c + _bias(linear, linear.out_features))


def _new_linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    out_f, in_f = weight.shape
    layer = nn.Linear(in_f, out_f).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


@torch.no_grad()
def merge_linears(fc1: nn.Linear, fc2: nn.Linear) -> nn.Linear:
    """One linear layer equal to ``fc2(fc1(x))`` (no activation in between)."""
    _check(fc1, (nn.Linear,), "fc1")
    _check(fc2, (nn.Linear,), "fc2")
    if fc1.out_features != fc2.in_features:
        raise ValueError(f"fc1 gives {fc1.out_features} features but fc2 expects {fc2.in_features}; "
                         "merge layers that follow each other.")
    weight = fc2.weight @ fc1.weight  # (out, mid) @ (mid, in) -> (out, in)
    return _new_linear(weight, fc2.weight @ _bias(fc1, fc1.out_features) + _bias(fc2, fc2.out_features))


@torch.no_grad()
def add_identity_linear(linear: nn.Linear) -> nn.Linear:
    """One linear layer equal to ``x + linear(x)`` (a residual connection folded in)."""
    _check(linear, (nn.Linear,), "linear")
    if linear.in_features != linear.out_features:
        raise ValueError(f"a residual needs a square layer, got {linear.in_features}→{linear.out_features}; "
                         "fold the residual only into a layer that keeps the width.")
    eye = torch.eye(linear.in_features, device=linear.weight.device, dtype=linear.weight.dtype)
    return _new_linear(linear.weight + eye, _bias(linear, linear.out_features))


def _chained(conv1: nn.Conv2d, conv2: nn.Conv2d) -> None:
    if conv1.out_channels != conv2.in_channels:
        raise ValueError(f"conv1 gives {conv1.out_channels} channels but conv2 expects {conv2.in_channels}; "
                         "merge convs that follow each other.")


@torch.no_grad()
def merge_1x1_kxk(conv1: nn.Conv2d, conv2: nn.Conv2d) -> nn.Conv2d:
    """One k×k conv equal to ``conv2(conv1(x))`` where ``conv1`` is 1×1 with stride 1 (either may be grouped).

    The merged conv takes ``conv1``'s padding plus ``conv2``'s, and ``conv2``'s stride. It is depthwise when
    both convs are depthwise, dense otherwise (1×1 → depthwise k×k: ``K[o,i] = D[o]·W₁[o,i]``).

    Raises:
        ValueError: when ``conv2`` pads and ``conv1`` has a non-zero bias. Zero padding of ``conv2`` then
            inserts zeros *after* ``conv1``, whereas the merged conv would see ``b₁`` there. Move the padding
            to the 1×1 conv (``conv1.padding = p``, ``conv2.padding = 0``): its border then holds ``b₁`` too.
    """
    _conv(conv1, "conv1")
    _conv(conv2, "conv2")
    if conv1.kernel_size != (1, 1) or conv1.stride != (1, 1):
        raise ValueError(f"conv1 must be 1×1 with stride 1 (got kernel {conv1.kernel_size}, stride "
                         f"{conv1.stride}); move the stride to the last conv of the block.")
    _chained(conv1, conv2)
    b1 = _bias(conv1, conv1.out_channels)
    if any(conv2.padding) and bool(b1.abs().max() > 0):
        raise ValueError("conv2 pads with zeros after conv1 adds its bias, so the merged conv would differ at "
                         f"the border; move the padding {conv2.padding} to the 1×1 conv (padding on the first "
                         "conv, none on the k×k) or remove conv1's bias.")
    padding = tuple(p1 + p2 for p1, p2 in zip(conv1.padding, conv2.padding))
    bias2 = _bias(conv2, conv2.out_channels)
    if is_depthwise(conv1) and is_depthwise(conv2):  # per channel: D₂[o] · d₁[o], still depthwise
        weight = conv2.weight * conv1.weight  # (C, 1, k, k) * (C, 1, 1, 1)
        bias = bias2 + conv2.weight.sum(dim=(1, 2, 3)) * b1
        return _new_conv(conv2, weight, bias, padding, conv2.stride, conv2.groups)
    w1, w2 = dense_weight(conv1)[:, :, 0, 0], dense_weight(conv2)  # (mid, in), (out, mid, k, k)
    weight = torch.einsum("omhw,mi->oihw", w2, w1)  # (out, in, k, k)
    bias = bias2 + torch.einsum("omhw,m->o", w2, b1)
    return _new_conv(conv2, weight, bias, padding, conv2.stride)


@torch.no_grad()
def merge_kxk_1x1(conv_k: nn.Conv2d, conv1: nn.Conv2d) -> nn.Conv2d:
    """One k×k conv equal to ``conv1(conv_k(x))`` for a 1×1 ``conv1`` without padding (either may be grouped).

    Exact for any padding, stride and dilation of ``conv_k`` (the 1×1 conv mixes channels pixel by pixel);
    a stride on ``conv1`` multiplies into the merged stride. This is ConvNeXt's order: depthwise k×k, then
    pointwise; the result is dense (a depthwise k×k followed by a dense 1×1 mixes channels).
    """
    _conv(conv_k, "conv_k", dilation=True)
    _conv(conv1, "conv1")
    if conv1.kernel_size != (1, 1) or any(conv1.padding):
        raise ValueError(f"conv1 must be 1×1 without padding (got kernel {conv1.kernel_size}, padding "
                         f"{conv1.padding}): its zero border would differ from what the merged conv computes "
                         "there; put the padding on the k×k conv.")
    _chained(conv_k, conv1)
    w1 = dense_weight(conv1)[:, :, 0, 0]  # (out, mid)
    weight = torch.einsum("om,mihw->oihw", w1, dense_weight(conv_k))  # (out, in, k, k)
    bias = w1 @ _bias(conv_k, conv_k.out_channels) + _bias(conv1, conv1.out_channels)
    stride = tuple(s1 * s2 for s1, s2 in zip(conv_k.stride, conv1.stride))
    return _new_conv(conv_k, weight, bias, conv_k.padding, stride, dilation=conv_k.dilation)


def identity_kernel(channels: int, kernel_size: int, dtype=torch.float32, device=None, groups: int = 1) -> torch.Tensor:
    """The (C, C/groups, k, k) kernel of the identity map (RepVGG): a one at the centre of channel ``o → o``."""
    if kernel_size % 2 != 1:
        raise ValueError(f"an identity kernel needs an odd size with a centre, got {kernel_size}; use 1, 3, 5, ...")
    if groups < 1 or channels % groups:
        raise ValueError(f"groups={groups} must be a positive divisor of channels={channels}.")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, kernel_size, kernel_size, dtype=dtype, device=device)
    c = kernel_size // 2
    kernel[torch.arange(channels), torch.arange(channels) % per_group, c, c] = 1.0
    return kernel


@torch.no_grad()
def add_identity_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """One conv equal to ``x + conv(x)``: needs C_in = C_out, stride 1 and 'same' padding ``k//2`` (any groups)."""
    _conv(conv, "conv")
    k = conv.kernel_size[0]
    if conv.in_channels != conv.out_channels or conv.stride != (1, 1) or conv.padding != (k // 2, k // 2) \
            or conv.kernel_size != (k, k):
        raise ValueError("x + conv(x) is one conv only for a square, stride-1 conv with C_in = C_out and "
                         f"padding k//2 (got {conv}); fold the residual into a conv of that shape.")
    eye = identity_kernel(conv.out_channels, k, conv.weight.dtype, conv.weight.device, conv.groups)
    return _new_conv(conv, conv.weight + eye, _bias(conv, conv.out_channels), conv.padding, conv.stride, conv.groups)


@torch.no_grad()
def add_branches(*convs: nn.Conv2d) -> nn.Conv2d:
    """One conv equal to ``Σ conv_i(x)`` for parallel branches with 'same' padding (``k//2``), stride and groups equal."""
    if not convs:
        raise ValueError("add_branches needs at least one conv; pass the parallel branches to sum.")
    for i, conv in enumerate(convs):
        _conv(conv, f"branch {i}")
        k = conv.kernel_size[0]
        if conv.kernel_size != (k, k) or k % 2 != 1 or conv.padding != (k // 2, k // 2):
            raise ValueError(f"branch {i} must be square, odd and padded by k//2 to align centres; got {conv}.")
    ref = convs[0]
    if any(c.stride != ref.stride or c.weight.shape[:2] != ref.weight.shape[:2] or c.groups != ref.groups
           for c in convs):
        raise ValueError("all branches need the same channels, groups and stride; build the parallel branches "
                         "with matching shapes.")
    k = max(c.kernel_size[0] for c in convs)
    weight = sum(F.pad(c.weight, [(k - c.kernel_size[0]) // 2] * 4) for c in convs)  # (out, in/groups, k, k)
    bias = sum(_bias(c, c.out_channels) for c in convs)
    return _new_conv(ref, weight, bias, (k // 2, k // 2), ref.stride, ref.groups)
