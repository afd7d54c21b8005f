# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 6 exercises: reparameterisation, the λ schedule and rank correlation
#
# Each exercise has a task, a cell for your code, and a check cell of assertions: run the check after you write
# your answer. The helpers below build BatchNorms with real statistics (a freshly built BN is the identity in eval
# mode and would hide mistakes) and measure the relative error that every merge in the chapter is held to (< 1e-5).

# %% tags=["nbval-ignore-output"]
import math

import torch
from torch import nn

from minillm.core.notebook import chapter_setup
from minillm.prune import ProgressiveAct, reparam

ctx = chapter_setup("Chapter 6 exercises: UPDP", minutes_tiny=0.5, minutes_full=0.5, threads=1)


def rel_err(merged, reference):
    return float(((merged - reference).abs().max() / reference.abs().max()).detach())


def calibrated_bn(channels, dims=2):
    bn = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    shape = (32, channels, 6, 6) if dims == 2 else (32, channels)
    for _ in range(5):
        bn(torch.randn(shape) * 2 + 0.7)
    return bn.eval()


# %% [markdown]
# ## Exercise 1: a BatchNorm *before* a conv
#
# Pre-norm blocks put the BN first: $\mathrm{conv}(\mathrm{BN}(x))$ with $\mathrm{BN}(x) = a \odot x + c$ per input
# channel. Write `fuse_bn_conv(bn, conv)` returning one `nn.Conv2d` equal to `conv(bn(x))` for a conv **without
# padding** (with padding the conv would see zeros where the fused conv sees $c$ — the same border problem as
# 1×1 → k×k in the chapter — so raise a `ValueError` when `conv.padding != (0, 0)`).
#
# *Hint:* scale the weight along its **input** axis; the bias gains $\sum_{i,h,w} W[o,i,h,w]\, c_i$.

# %%
def fuse_bn_conv(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> nn.Conv2d:
    # BEGIN SOLUTION
    if conv.padding != (0, 0):
        raise ValueError("a BN before a padded conv is not one conv: the padding would hold c, not 0")
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)            # (C_in,)
    c = bn.bias - a * bn.running_mean                               # (C_in,)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0)
    b = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * a[None, :, None, None])   # (C_out, C_in, k, k)
        fused.bias.copy_(b + torch.einsum("oihw,i->o", conv.weight, c))
    return fused
    # END SOLUTION


# %%
torch.manual_seed(1)
bn, conv = calibrated_bn(5), nn.Conv2d(5, 7, 3, stride=2)
bn.eps = 1e-3  # some frameworks' default; large enough that a forgotten eps shows
x = torch.randn(4, 5, 9, 9)
with torch.no_grad():
    fused = fuse_bn_conv(bn, conv)
    assert isinstance(fused, nn.Conv2d) and fused.stride == (2, 2) and fused.padding == (0, 0)
    assert rel_err(fused(x), conv(bn(x))) < 1e-5
try:
    fuse_bn_conv(bn, nn.Conv2d(5, 7, 3, padding=1))
    raise AssertionError("a padded conv must be refused")
except ValueError:
    pass
print("exercise 1: exact")


# %% [markdown]
# ## Exercise 2: a depthwise k×k then a 1×1 (the ConvNeXt order)
#
# ConvNeXt runs a depthwise k×k conv (`groups = C`, one filter $D[c]$ per channel) *before* its pointwise convs.
# Write `merge_dw_1x1(dw, pw)` returning one dense `nn.Conv2d` equal to `pw(dw(x))`, **without** building the
# block-diagonal dense kernel of `dw`: use broadcasting, $K[o, c] = W_{1\times1}[o, c]\, D[c]$, and the bias
# $W_{1\times1}\, b_{dw} + b_{1\times1}$. Why is this order exact for **any** padding and stride of the depthwise
# conv, unlike 1×1 → k×k? (Answer in a comment: what does a 1×1 conv do to a border pixel?)

# %%
def merge_dw_1x1(dw: nn.Conv2d, pw: nn.Conv2d) -> nn.Conv2d:
    # BEGIN SOLUTION
    # A 1×1 conv acts on each output pixel of the depthwise conv separately, border pixels included, so nothing
    # is padded *between* the two convs and the padding/stride of the depthwise conv carry over unchanged.
    d = dw.weight[:, 0]                                                  # (C, k, k): one filter per channel
    w1 = pw.weight[:, :, 0, 0]                                           # (out, C)
    weight = w1[:, :, None, None] * d[None]                              # (out, C, k, k)
    b_dw = dw.bias if dw.bias is not None else torch.zeros(dw.out_channels)
    b_pw = pw.bias if pw.bias is not None else torch.zeros(pw.out_channels)
    merged = nn.Conv2d(dw.in_channels, pw.out_channels, dw.kernel_size, dw.stride, dw.padding)
    with torch.no_grad():
        merged.weight.copy_(weight)
        merged.bias.copy_(w1 @ b_dw + b_pw)
    return merged
    # END SOLUTION


# %%
torch.manual_seed(2)
dw, pw = nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8), nn.Conv2d(8, 12, 1)
x = torch.randn(3, 8, 11, 11)
with torch.no_grad():
    merged = merge_dw_1x1(dw, pw)
    assert isinstance(merged, nn.Conv2d) and merged.groups == 1 and merged.weight.shape == (12, 8, 5, 5)
    assert merged.kernel_size == (5, 5) and merged.padding == (2, 2) and merged.stride == (2, 2)
    assert rel_err(merged(x), pw(dw(x))) < 1e-5
    assert rel_err(merged.weight, reparam.merge_kxk_1x1(dw, pw).weight) < 1e-5  # the package's general rule
print("exercise 2: exact")


# %% [markdown]
# ## Exercise 3: a whole RepVGG block in one conv
#
# A RepVGG block {cite}`ding2021repvgg` trains three parallel branches and sums them:
# $y = \mathrm{BN}_3(W_3 * x) + \mathrm{BN}_1(W_1 * x) + \mathrm{BN}_0(x)$ (3×3 conv with padding 1, 1×1 conv, and the
# identity, each followed by its own BN). Using only `minillm.prune.reparam` (`fuse_conv_bn`, `identity_kernel`,
# `add_branches`), write `repvgg_to_conv(conv3, bn3, conv1, bn1, bn0)` returning one 3×3 conv.

# %%
def repvgg_to_conv(conv3, bn3, conv1, bn1, bn0) -> nn.Conv2d:
    # BEGIN SOLUTION
    channels = conv3.out_channels
    identity = nn.Conv2d(channels, channels, 1, bias=False)   # the identity branch as a 1×1 conv
    with torch.no_grad():
        identity.weight.copy_(reparam.identity_kernel(channels, 1))
    branches = [reparam.fuse_conv_bn(conv3, bn3), reparam.fuse_conv_bn(conv1, bn1), reparam.fuse_conv_bn(identity, bn0)]
    return reparam.add_branches(*branches)
    # END SOLUTION


# %%
torch.manual_seed(3)
C = 8
conv3, conv1 = nn.Conv2d(C, C, 3, padding=1, bias=False), nn.Conv2d(C, C, 1, bias=False)
bn3, bn1, bn0 = calibrated_bn(C), calibrated_bn(C), calibrated_bn(C)
x = torch.randn(2, C, 10, 10)
with torch.no_grad():
    reference = bn3(conv3(x)) + bn1(conv1(x)) + bn0(x)
    single = repvgg_to_conv(conv3, bn3, conv1, bn1, bn0)
    assert isinstance(single, nn.Conv2d) and single.kernel_size == (3, 3)
    assert rel_err(single(x), reference) < 1e-5
print("exercise 3: three branches, one conv, exact")


# %% [markdown]
# ## Exercise 4: a smoother λ schedule
#
# The chapter's schedule $\lambda(t) = \min(1, t/\rho T)$ has a kink at both ends of the ramp. Write
# `cosine_lambda(step, total, ramp)`: $\lambda = \tfrac12\big(1 - \cos(\pi t / \rho T)\big)$ for $t < \rho T$ and
# $1$ afterwards. It must start at 0, reach exactly 1 at $t = \rho T$, never decrease, and change more slowly than the
# linear schedule in its first steps (its slope is zero at $t = 0$). Raise `ValueError` for a ramp outside $(0, 1]$.

# %%
def cosine_lambda(step: int, total: int, ramp: float = 0.5) -> float:
    # BEGIN SOLUTION
    if not 0.0 < ramp <= 1.0:
        raise ValueError(f"ramp must be in (0, 1], got {ramp}")
    end = ramp * total
    if step >= end:
        return 1.0
    return 0.5 * (1.0 - math.cos(math.pi * step / end))
    # END SOLUTION


# %%
from minillm.prune import lambda_schedule

total, ramp = 200, 0.5
values = [cosine_lambda(t, total, ramp) for t in range(total)]
assert values[0] == 0.0 and values[100] == 1.0 and values[-1] == 1.0
assert all(a <= b for a, b in zip(values, values[1:]))
assert cosine_lambda(5, total, ramp) < lambda_schedule(5, total, ramp) / 5     # gentle start
assert abs(cosine_lambda(50, total, ramp) - 0.5) < 1e-12                      # symmetric ramp
x = torch.randn(100)
assert torch.equal(ProgressiveAct()(x, cosine_lambda(100, total, ramp)), x)    # the end of the ramp is mergeable
try:
    cosine_lambda(0, 10, ramp=1.5)
    raise AssertionError("a ramp above 1 must be refused")
except ValueError:
    pass
print("exercise 4: schedule checks pass")


# %% [markdown]
# ## Exercise 5: a rank correlation that handles ties
#
# The chapter's Table 5 study ranks 20 subnets by supernet fitness and by fine-tuned accuracy and correlates the
# ranks (Spearman's $\rho$ = the Pearson correlation of the ranks). Accuracies on a few hundred test images **tie**
# often, and tied values must share the *average* of the ranks they occupy (values 0.9, 0.95, 0.95, 0.97 get ranks
# 1, 2.5, 2.5, 4). Write `spearman(a, b)` for two equally long lists, in NumPy, without `scipy`.

# %%
import numpy as np


def spearman(a, b) -> float:
    # BEGIN SOLUTION
    def ranks(values):
        values = np.asarray(values, dtype=float)
        order = np.argsort(values, kind="stable")
        r = np.empty(len(values))
        r[order] = np.arange(1, len(values) + 1)
        for v in np.unique(values):  # ties share the average of their ranks
            r[values == v] = r[values == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])
    # END SOLUTION


# %%
from minillm.prune import spearman as package_spearman

rng = np.random.default_rng(5)
fit = np.round(rng.uniform(0.6, 0.9, 20), 2)              # many ties after rounding
acc = np.round(fit + rng.normal(0, 0.05, 20), 2)
assert abs(spearman(fit, acc) - package_spearman(fit, acc)) < 1e-12
assert abs(spearman([1, 2, 3, 4], [10, 20, 30, 40]) - 1.0) < 1e-12     # monotone: 1 whatever the spacing
assert abs(spearman([1, 2, 3, 4], [1, 4, 9, 100]) - 1.0) < 1e-12       # (Pearson on the values is not 1 here)
assert abs(spearman([0.9, 0.95, 0.95, 0.97], [1, 2, 3, 4]) - package_spearman([0.9, 0.95, 0.95, 0.97], [1, 2, 3, 4])) < 1e-12
print("exercise 5: ranks with ties match the package")
