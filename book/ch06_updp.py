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
# # Chapter 6: UPDP — pruning depth by reparameterisation
#
# A network's latency on real hardware depends not only on its FLOPs but on how many layers run *one after
# another*: each layer is a kernel launch, a trip through memory and a synchronisation point. Channel pruning makes
# every layer thinner but keeps the chain as long; **depth pruning** shortens the chain. UPDP, the *Unified
# Progressive Depth Pruner* {cite}`liu2024updp`, removes whole blocks of a CNN or a vision transformer without
# dropping their weights: it makes a block *linear*, trains the network to live without that block's
# non-linearity, and then folds the block's layers into one by **structural reparameterisation**, the trick behind
# RepVGG {cite}`ding2021repvgg`.
#
# In this chapter we
#
# 1. derive the reparameterisation rules (conv + BN, FC + FC, 1×1 → k×k, k×k → 1×1, identity → conv, branch
#    addition), for dense, grouped and depthwise convolutions, and prove each **exact** against the unmerged layers;
# 2. build the UPDP **pruned block** for the paper's main model shape, a ConvNeXt block (depthwise k×k, then a
#    1×1 expansion and a 1×1 projection): activation → identity through a progressive $\lambda$, LayerNorm →
#    BatchNorm, an activation and a BN inserted after the block;
# 3. run the four UPDP stages on a small residual CNN: **supernet** training with the sandwich rule
#    {cite}`yu2019universally`, **genetic search** for the best subnet, **progressive** subnet training (against
#    *direct* pruning), and **merging** into a shallower model that computes the same function;
# 4. measure where the speed comes from — the norm swap, the activation removal, the merge — in one benchmark run;
# 5. repeat the paper's two ablations over several seeds: does the supernet's ranking of the subnets predict how
#    they fine-tune (its Table 5, here over *every* subnet), and does progressive training beat direct pruning
#    (its Table 6)?
# 6. run the stages on a small ViT, where LayerNorm → BatchNorm and a GELU & BN after the block make the MLP
#    mergeable.
#
# There is no official UPDP code; everything here is our reading of the paper, written from scratch in
# `minillm.prune`.

# %% tags=["nbval-ignore-output"]
import copy

import matplotlib.pyplot as plt
import numpy as np
import torch
from myst_nb import glue
from torch import nn

from minillm.core.notebook import chapter_setup
from minillm.prune import reparam

# The chapter's models are tiny: a second CPU thread adds synchronisation and no speed, and one thread
# makes the training runs repeat bit for bit on one machine.
ctx = chapter_setup("Chapter 6: UPDP depth pruning", minutes_tiny=2.5, minutes_full=40, threads=1)


# %% [markdown]
# ## 1. When can a block disappear?
#
# A residual block computes $y = x + g(x)$. If $g$ is **affine** — a chain of convolutions and BatchNorms with
# nothing non-linear in between — so is $y$, and a chain of affine maps is one affine map: the whole block is a single
# convolution. Two things stand in the way in a modern block (ConvNeXt's or a transformer's):
#
# * the **activation** (GELU/ReLU) between the convolutions is non-linear;
# * **LayerNorm / GroupNorm** divide by statistics of the *current input*, so they are not affine either. BatchNorm is:
#   at inference it uses running statistics, $\mathrm{BN}(z) = \gamma \frac{z - \mu}{\sigma} + \beta$ with fixed
#   $\mu, \sigma$.
#
# UPDP's pruned block therefore swaps LN/GN for BN and turns the activation into the identity. Removing the
# activation at once damages what the weights learned, so UPDP removes it **progressively**:
#
# $$
# \mathrm{act}_\lambda(x) = (1 - \lambda)\,\mathrm{act}(x) + \lambda\, x, \qquad \lambda: 0 \to 1 \text{ during training}.
# $$
#
# At $\lambda = 1$ the block is affine and merges; an activation and a BN **after** the block keep one
# non-linearity at that depth (the BN folds into the merged conv), so a pruned block becomes exactly `conv → act`.
#
# ## 2. Reparameterisation, derived
#
# **Conv + BN.** With $\sigma = \sqrt{\mathrm{var} + \epsilon}$ and a per-output-channel scale $a = \gamma / \sigma$,
#
# $$
# \mathrm{BN}(W * x + b) = a \odot (W * x + b - \mu) + \beta = (a \odot W) * x + \big(a \odot (b - \mu) + \beta\big).
# $$
#
# Scale each output filter by $a_o$, and the bias becomes $a \odot (b - \mu) + \beta$. Here it is, written out:

# %% tags=["package-twin"]
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    # BN(W*x + b) = (a·W)*x + a·(b − μ) + β   with a = γ / sqrt(var + eps), per output channel.
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)                       # (C_out,)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      groups=conv.groups)
    b = conv.bias if conv.bias is not None else torch.zeros_like(a)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * a[:, None, None, None])            # (C_out, C_in / groups, k, k)
        fused.bias.copy_(a * (b - bn.running_mean) + bn.bias)
    return fused


# %% [markdown]
# A BN that has only ever seen its initial statistics ($\mu = 0$, $\sigma \approx 1$, $\gamma = 1$, $\beta = 0$) would
# make any fusion look right, so the check gives the BN real statistics first, then compares in eval mode. Every
# merge in this chapter is held to the same standard: **relative error below $10^{-5}$ in float32**.

# %%
def rel_err(merged: torch.Tensor, reference: torch.Tensor) -> float:
    """max |merged − reference| / max |reference|"""
    return float(((merged - reference).abs().max() / reference.abs().max()).detach())


def calibrated_bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    for _ in range(5):
        bn(torch.randn(32, channels, 6, 6) * 2 + 0.7)  # training mode: running stats move
    return bn.eval()


conv, bn = nn.Conv2d(3, 8, 3, stride=2, padding=1), calibrated_bn(8)
x = torch.randn(4, 3, 11, 11)
with torch.no_grad():
    reference = bn(conv(x))
    ours, package = fuse_conv_bn(conv, bn)(x), reparam.fuse_conv_bn(conv, bn)(x)
assert rel_err(ours, reference) < 1e-5 and rel_err(package, reference) < 1e-5
print("conv+BN fused (ours and the package's): relative error < 1e-5")

# %% [markdown]
# **FC → FC** (no activation between): $W_2(W_1 x + b_1) + b_2 = (W_2 W_1)\,x + (W_2 b_1 + b_2)$. **FC + BN** is
# conv + BN with a matrix. **Identity → conv** (RepVGG): $x$ itself is a convolution whose kernel holds a one at the
# centre of channel $o \to o$, so $x + \mathrm{conv}(x)$ is one conv with that kernel added. **Parallel branches**
# add their kernels once the smaller kernel is zero-padded to the larger size (both padded by $k/2$, so the centres
# line up).
#
# **1×1 → k×k.** A 1×1 conv mixes channels at each pixel, $y = W_1 x + b_1$; the k×k conv after it is
# $z = W_2 * y + b_2$. Substituting,
#
# $$
# K_{o,i} = \sum_m W_2[o, m]\, W_1[m, i] \quad (\text{a } k\times k \text{ kernel}), \qquad
# b = b_2 + \sum_{m,h,w} W_2[o, m, h, w]\, b_1[m].
# $$
#
# The catch is the **padding**. If the k×k conv zero-pads $y$, the border of $y$ holds zeros, but the merged conv
# pads $x$ with zeros and computes $W_1 \cdot 0 + b_1 = b_1$ there. The two differ at every border pixel whenever
# $b_1 \ne 0$ (and a BN folded into the 1×1 conv always leaves a bias). The package refuses that merge and names
# the fix:

# %% tags=["raises-exception"]
conv1 = nn.Conv2d(4, 16, 1)                 # 1×1 with a bias
conv2 = nn.Conv2d(16, 8, 3, padding=1)      # k×k that zero-pads its input
reparam.merge_1x1_kxk(conv1, conv2)

# %% [markdown]
# UPDP's fix is to **move the padding to the first conv**: the 1×1 conv pads $x$ by one pixel and the 3×3 conv pads
# nothing. Now the 1×1's border outputs are exactly $b_1$ — what the merged conv computes on its zero-padded input —
# and the merge is exact. Let us see both numbers, the naive merge against the moved padding:

# %%
x = torch.randn(2, 4, 8, 8)
naive = nn.Conv2d(4, 8, 3, padding=1)
with torch.no_grad():  # the formula above, applied without caring about the padding
    naive.weight.copy_(torch.einsum("omhw,mi->oihw", conv2.weight, conv1.weight[:, :, 0, 0]))
    naive.bias.copy_(conv2.bias + torch.einsum("omhw,m->o", conv2.weight, conv1.bias))
    naive_err = rel_err(naive(x), conv2(conv1(x)))
    inside_err = rel_err(naive(x)[..., 1:-1, 1:-1], conv2(conv1(x))[..., 1:-1, 1:-1])

    moved1, moved2 = nn.Conv2d(4, 16, 1, padding=1), nn.Conv2d(16, 8, 3, padding=0)  # padding on the 1×1
    moved1.load_state_dict(conv1.state_dict()), moved2.load_state_dict(conv2.state_dict())
    merged = reparam.merge_1x1_kxk(moved1, moved2)
    moved_err = rel_err(merged(x), moved2(moved1(x)))
assert naive_err > 1e-2 and inside_err < 1e-5 and moved_err < 1e-5
print("naive merge:   relative error above 1e-2, all of it on the border (interior < 1e-5)")
print(f"padding moved: relative error < 1e-5, merged kernel {tuple(merged.weight.shape)}, padding {merged.padding}")

# %% [markdown]
# The remaining rules, each against the layers it replaces (`tests/prune/test_prune_reparam.py` holds the same
# checks, plus the errors for unsupported module types — a `LayerNorm` cannot be fused and says so):

# %%
torch.manual_seed(0)
x, t = torch.randn(3, 6, 8, 8), torch.randn(5, 6)
c3, c1, fc1, fc2 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1), nn.Linear(6, 24), nn.Linear(24, 6)
with torch.no_grad():
    checks = {
        "FC → FC": rel_err(reparam.merge_linears(fc1, fc2)(t), fc2(fc1(t))),
        "x + conv(x) (RepVGG identity)": rel_err(reparam.add_identity_conv(c3)(x), x + c3(x)),
        "3×3 + 1×1 branches": rel_err(reparam.add_branches(c3, c1)(x), c3(x) + c1(x)),
    }
for rule, err in checks.items():
    assert err < 1e-5, rule
    print(f"{rule:30s} exact (relative error < 1e-5)")


# %% [markdown]
# ### Grouped and depthwise convolutions
#
# ConvNeXt and MobileNet are built from **depthwise** convolutions: `groups = C`, one k×k filter per channel. A
# grouped conv is a dense conv whose kernel is *block-diagonal* — zero between groups — so every rule above still
# holds once we say what happens to that structure:
#
# * **conv + BN**: the BN scales each *output* filter, and a grouped conv's filters are still one per output
#   channel, so the fused conv keeps its groups (a depthwise conv stays depthwise);
# * **1×1 → depthwise k×k** (MobileNet's order): the depthwise kernel is $W_2[o, m] = \delta_{om} D[o]$, so
#   $K[o, i] = D[o]\, W_1[o, i]$ — a *dense* k×k conv, with the same padding condition as before;
# * **k×k → 1×1** (ConvNeXt's order): $K[o, i] = \sum_m W_{1\times1}[o, m]\, W_k[m, i]$, exact for **any** padding and
#   stride of the k×k conv, because a 1×1 conv acts on every output pixel of the k×k conv separately — border pixels
#   included, and nothing is padded between the two;
# * **identity** and **branches**: a depthwise identity kernel has its one at the centre of each channel's own
#   filter, and depthwise branches add like dense ones.

# %%
torch.manual_seed(1)
x, x4 = torch.randn(2, 8, 9, 9), torch.randn(2, 4, 9, 9)
dw, dw_bn, pw = nn.Conv2d(8, 8, 5, padding=2, groups=8), calibrated_bn(8), nn.Conv2d(8, 16, 1)
expand, dw3 = nn.Conv2d(4, 8, 1, padding=1), nn.Conv2d(8, 8, 3, padding=0, groups=8)  # padding on the 1×1
c3dw, c1dw = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1, groups=8)
rules = {  # name: (merged conv, input, what it replaces)
    "depthwise 5×5 + BN": (reparam.fuse_conv_bn(dw, dw_bn), x, lambda v: dw_bn(dw(v))),
    "depthwise 5×5 → 1×1 (ConvNeXt order)": (reparam.merge_kxk_1x1(dw, pw), x, lambda v: pw(dw(v))),
    "1×1 → depthwise 3×3 (MobileNet order)": (reparam.merge_1x1_kxk(expand, dw3), x4, lambda v: dw3(expand(v))),
    "depthwise identity + 3×3 + 1×1": (reparam.add_identity_conv(reparam.add_branches(c3dw, c1dw)), x,
                                       lambda v: v + c3dw(v) + c1dw(v)),
}
for rule, (conv_out, inp, reference) in rules.items():
    with torch.no_grad():
        assert rel_err(conv_out(inp), reference(inp)) < 1e-5, rule
    kind = "depthwise" if reparam.is_depthwise(conv_out) else "dense"
    print(f"{rule:38s} exact (< 1e-5): one {kind} conv, weight {tuple(conv_out.weight.shape)}")

# %% [markdown]
# What is *not* exact is still refused: a depthwise 3×3 that zero-pads after a biased 1×1 (the border problem
# again), a 1×1 that pads after a k×k, branches with different groups, a reflect-padded conv. The bad-input tests
# (`tests/prune/test_prune_bad_inputs.py`) hold each refusal and check that its message names the fix:

# %%
refusals = {
    "1×1 → padded depthwise 3×3": lambda: reparam.merge_1x1_kxk(nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)),
    "k×k → padded 1×1": lambda: reparam.merge_kxk_1x1(dw, nn.Conv2d(8, 8, 1, padding=1)),
    "branches with different groups": lambda: reparam.add_branches(c3dw, nn.Conv2d(8, 8, 1)),
    "reflect padding + BN": lambda: reparam.fuse_conv_bn(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), dw_bn),
}
for name, call in refusals.items():
    try:
        call()
        raise AssertionError(f"{name} was accepted")
    except ValueError as err:
        print(f"{name:32s} refused: {str(err).split(';')[0][:70]}")

# %% [markdown]
# ## 3. The pruned ConvNeXt block
#
# Our CNN block is ConvNeXt's: a depthwise 3×3 conv mixes each channel spatially, a LayerNorm over the channels of
# each pixel follows, then a 1×1 conv expands the channels 4×, a GELU, a 1×1 conv projects back, and a residual adds
# the input. Its two forms share the convolutions:
#
# $$
# \text{full:}\;\; y = x + P\,\mathrm{GELU}\big(E\,\mathrm{LN}(D * x)\big), \qquad
# \text{pruned:}\;\; y = \mathrm{GELU}\Big(\mathrm{BN}_{\text{post}}\big(x + P\,\mathrm{act}_\lambda(E\,\mathrm{BN}(D * x))\big)\Big),
# $$
#
# with $D$ the depthwise kernel and $E$, $P$ the 1×1 expansion and projection. Because the k×k conv comes *first*,
# the pruned form needs no padding move: k×k → 1×1 merges exactly whatever the k×k pads. (The package also has the
# bottleneck block, 1×1 → GroupNorm → GELU → k×k, which needs the padding on its 1×1 conv:
# `ResCNNConfig(block="bottleneck")`.) The paper shrinks the depthwise kernels of pruned ConvNeXt blocks from 7×7 to
# 3×3, because a merged block is a *dense* k×k conv whose cost grows with $k^2 C^2$; our blocks are 3×3 throughout.
#
# The progressive activation is one line; we re-derive it here and a test holds it equal to
# `minillm.prune.ProgressiveAct`:

# %% tags=["package-twin"]
class ProgressiveAct(nn.Module):
    # act_λ(x) = (1 − λ)·act(x) + λ·x : the activation at λ = 0, the identity at λ = 1.

    def __init__(self, act: str = "gelu"):
        super().__init__()
        self.act = {"gelu": nn.GELU, "relu": nn.ReLU}[act]()

    def forward(self, x: torch.Tensor, lam: float = 0.0) -> torch.Tensor:
        if lam == 1.0:
            return x
        return self.act(x) if lam == 0.0 else (1.0 - lam) * self.act(x) + lam * x


# %%
from minillm.prune import ProgressiveAct as PackageProgressiveAct

z = torch.linspace(-4, 3, 200)
fig, ax = plt.subplots(figsize=(5.5, 3.5))
for lam in (0.0, 0.25, 0.5, 0.75, 1.0):
    y = ProgressiveAct()(z, lam)
    assert torch.equal(y, PackageProgressiveAct()(z, lam))
    ax.plot(z, y, label=f"λ = {lam:g}")
ax.set(title="act_λ moves GELU to the identity", xlabel="input x", ylabel="act_λ(x)")
ax.legend()
plt.show()

# %% [markdown]
# `PrunableConvNeXtBlock.merge` applies five rules in a row: BN into the depthwise conv (a grouped conv + BN), the
# expansion into it (depthwise k×k → 1×1: now a dense k×k), the projection (k×k → 1×1 again), the residual as an
# identity kernel, and the post-block BN. What is left is one dense 3×3 conv and a GELU:

# %%
from minillm.prune import PrunableConvNeXtBlock, count_layers

block = PrunableConvNeXtBlock(channels=16, expand=64)
block.pruned, block.lam = True, 1.0
block.train()
with torch.no_grad():
    for _ in range(5):  # give every BN running statistics
        block(torch.randn(64, 16, 8, 8))
block.eval()
merged_block = block.merge()
x = torch.randn(8, 16, 8, 8)
with torch.no_grad():
    block_err = rel_err(merged_block(x), block(x))
assert block_err < 1e-5
print(merged_block)
print("merged block equals the pruned block: relative error < 1e-5")
full_block = PrunableConvNeXtBlock(channels=16, expand=64).eval()
for name, module in (("full block", full_block), ("pruned block", block), ("merged block", merged_block)):
    c = count_layers(module, x)
    print(f"{name:13s} runs {c['weight']} weight layers, {c['norm']} norms, {c['act']} activations")
conv_weights = {"block": sum(m.weight.numel() for m in (block.dw, block.pw1, block.pw2)),
                "merged": merged_block[0].weight.numel()}
print(f"conv weights: depthwise 3×3 + two 1×1 = {conv_weights['block']}, merged dense 3×3 = {conv_weights['merged']}")
glue("ch06_block_weights", f"{conv_weights['block']:,}", display=False)
glue("ch06_merged_weights", f"{conv_weights['merged']:,}", display=False)

# %% [markdown]
# The merged block has fewer layers but is not smaller in every way: its dense 3×3 kernel has
# {glue:text}`ch06_merged_weights` weights ($9 \cdot 16 \cdot 16$), against {glue:text}`ch06_block_weights` in the
# depthwise conv and the two 1×1 convs together. Depth pruning trades a chain of cheap layers for one denser layer.
#
# ## 4. Data and the baseline
#
# The tiny profile uses scikit-learn's 1,797 handwritten digits (8×8 pixels, bundled with the library, so nothing is
# downloaded); the full profile uses Fashion-MNIST from the Debian package `dataset-fashion-mnist`. The model is a stack
# of the ConvNeXt blocks above (six in the tiny profile) between a 3×3 stem and a linear classifier.

# %%
from minillm.data.images import load_image_data
from minillm.prune import UPDP_FULL, UPDP_TINY, ResCNN, all_masks, image_accuracy, train_image_classifier

cfg = ctx.profile.pick(UPDP_TINY, UPDP_FULL)
data = cfg.prepare(load_image_data(cfg.data))
print(data.describe())
print(cfg.cnn)
torch.manual_seed(ctx.seed)
baseline = ResCNN(cfg.cnn).to(ctx.device)
n, k = baseline.num_blocks, cfg.pruned_blocks
print(f"{sum(p.numel() for p in baseline.parameters()):,} parameters; {n} blocks, of which {k} will be pruned: "
      f"{len(all_masks(n, k))} candidate subnets")

# %% [markdown]
# The baseline trains with AdamW and a cosine schedule; the run is logged to mlflow.

# %% tags=["nbval-ignore-output"]
from minillm.core.tracking import mlflow_run

with mlflow_run("ch06-updp", run_name="cnn-baseline", params={**cfg.baseline.__dict__, **cfg.cnn.__dict__}) as tracker:
    baseline_losses = train_image_classifier(baseline, data, cfg.baseline, tracker=tracker, desc="baseline")
    baseline_acc = image_accuracy(baseline, data.x_test, data.y_test)
    tracker.log_metrics({"test_acc": baseline_acc})
ctx.profile.assert_full_length(baseline_acc > 0.93, "the baseline CNN should reach 93 % test accuracy")
print(f"baseline test accuracy: {baseline_acc:.3f}")

# %% [markdown]
# ## 5. Stage 1: the supernet and the sandwich rule
#
# Which blocks should go? To compare subnets we would need to train every candidate.
# A **supernet** shares one set of weights among all of them: every block can run full or pruned (at $\lambda = 1$,
# its mergeable form). Each optimiser step accumulates the gradients of four subnets,
#
# $$
# g = \nabla \tfrac{1}{4}\big(L_{\text{all full}} + L_{\text{random}_1} + L_{\text{random}_2} + L_{\text{all pruned}}\big),
# $$
#
# the *sandwich rule*: the largest and the smallest subnet bound the family, the random ones cover the middle. The
# supernet starts from the baseline weights.

# %% tags=["nbval-ignore-output"]
from minillm.prune import subnet_fitness, train_supernet

supernet = copy.deepcopy(baseline)
with mlflow_run("ch06-updp", run_name="cnn-supernet", params=cfg.supernet.__dict__) as tracker:
    supernet_losses = train_supernet(supernet, data, cfg.supernet, tracker=tracker)

fitness = subnet_fitness(copy.deepcopy(supernet), data, cfg.calib_batches)  # val accuracy after BN recalibration
full_fit, pruned_fit = fitness((False,) * n), fitness((True,) * n)
ctx.profile.assert_full_length(full_fit > 0.85 and pruned_fit > 0.3,
                               "the supernet should work with every block full, and clearly above chance with all pruned")
print(f"supernet, validation accuracy: all blocks full {full_fit:.3f}, all blocks pruned {pruned_fit:.3f}")

# %% [markdown]
# The fitness of a subnet first **recalibrates BatchNorm**: a pruned block's BN saw many different upstream subnets
# during supernet training, and its running statistics must match the one subnet being scored.
#
# ## 6. Stage 2: genetic search
#
# The search looks for the best subnet with exactly $k$ pruned blocks. A candidate is a mask; a child prunes $k$
# blocks drawn from the union of its parents' pruned blocks (crossover), and sometimes swaps one pruned block for a
# kept one (mutation), so it never leaves the feasible set. A real network has dozens of blocks (ConvNeXt-T has 18),
# far too many subsets to enumerate, which is why the search exists; with the tiny profile's six blocks there are
# only $\binom{6}{3} = 20$, so we can say how many of them the search had to score, and check its answer against all
# of them.

# %% tags=["nbval-ignore-output"]
from minillm.prune import genetic_search
from minillm.prune.progressive import describe_mask

ga = genetic_search(fitness, n, k, cfg.search)
candidates = all_masks(n, k)[:ctx.profile.size(len(all_masks(n, k)), smoke=4)]  # a smoke run scores only a few
everything = {m: ga.evaluated[m] if m in ga.evaluated else fitness(m) for m in set(candidates) | set(ga.evaluated)}
ranking = sorted(everything.values(), reverse=True)
ga_rank = ranking.index(ga.best_fitness) + 1
best_all = max(everything, key=everything.get)
ctx.profile.assert_full_length(ga_rank <= 3, "the genetic search should land among the best few subnets by fitness")
print(f"genetic search scored {len(ga.evaluated)} of {len(all_masks(n, k))} subnets; best [{describe_mask(ga.best)}] "
      f"val acc {ga.best_fitness:.3f}, rank {ga_rank} by fitness "
      f"(best of all [{describe_mask(best_all)}] {everything[best_all]:.3f})")
best_mask = ga.best

# %%
masks = sorted(everything, key=everything.get)
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar(range(len(masks)), [everything[m] for m in masks],
       color=["tab:red" if m == ga.best else ("tab:blue" if m in ga.evaluated else "tab:gray") for m in masks])
ax.set_xticks(range(len(masks)), [describe_mask(m).replace(" ", "") for m in masks], rotation=90, fontsize=7)
ax.set(title=f"Supernet validation accuracy of every subnet with {k} of {n} blocks pruned\n"
             "(red: search result, blue: also scored by the search, grey: never scored)",
       xlabel="subnet (P = pruned block)", ylabel="validation accuracy")
ax.set_ylim(min(everything.values()) - 0.05, 1.0)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Stage 3: progressive versus direct subnet training
#
# Now the chosen subnet is fine-tuned, in two arms that start from the **same baseline weights** and train for the
# same steps with the same data order:
#
# * **direct**: the pruned blocks' activations are removed at once ($\lambda = 1$ from the first step);
# * **progressive** (UPDP): $\lambda(t) = \min(1, t / \rho T)$ ramps from 0 to 1 over the first $\rho T$ steps and
#   stays at 1, so the last steps train the exact, mergeable form.
#
# This is one run of each arm, to walk through the stages; section 10 repeats the comparison for every subnet over
# several seeds, which is what a claim about the two needs.

# %% tags=["nbval-ignore-output"]
from minillm.prune import lambda_schedule, train_subnet

subnets, subnet_losses, subnet_acc = {}, {}, {}
for arm in ("direct", "progressive"):
    subnet = copy.deepcopy(baseline)
    with mlflow_run("ch06-updp", run_name=f"cnn-{arm}", params={**cfg.subnet.__dict__, "mask": describe_mask(best_mask)}) as tracker:
        subnet_losses[arm] = train_subnet(subnet, best_mask, data, cfg.subnet, progressive=arm == "progressive",
                                          ramp=cfg.ramp, tracker=tracker)
        subnet_acc[arm] = image_accuracy(subnet, data.x_test, data.y_test)
        tracker.log_metrics({"test_acc": subnet_acc[arm]})
    subnets[arm] = subnet.eval()
    print(f"{arm:12s} subnet test accuracy {subnet_acc[arm]:.3f}")
ctx.profile.assert_full_length(min(subnet_acc.values()) > 0.9, "both fine-tuned subnets should reach 90 %")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for arm, losses in subnet_losses.items():
    ax.plot(losses, label=arm)
ax.set(title="Subnet fine-tuning from the baseline weights", xlabel="optimiser step", ylabel="training loss (cross-entropy)")
ax.set_yscale("log")
lam_ax = ax.twinx()
steps = len(subnet_losses["progressive"])
lam_ax.plot([lambda_schedule(s, steps, cfg.ramp) for s in range(steps)], "k:", label="λ (progressive)")
lam_ax.set_ylabel("λ of the progressive arm")
fig.legend(loc="upper right", bbox_to_anchor=(0.88, 0.88))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 8. Stage 4: merging
#
# At $\lambda = 1$ every pruned block is affine between its input and its post-block GELU, so
# `PrunableModel.merged()` replaces it by one `conv → GELU`. The merged model must compute what the subnet computes,
# and so must have the same test accuracy:

# %%
from minillm.prune.progressive import merge_error

merged, merged_acc = {}, {}
for arm, subnet in subnets.items():
    merged[arm] = subnet.merged()
    assert merge_error(subnet, merged[arm], data.x_test) < 1e-5
    merged_acc[arm] = image_accuracy(merged[arm], data.x_test, data.y_test)
    assert merged_acc[arm] == subnet_acc[arm]
example = data.x_test[:1]
layers = {"baseline": count_layers(baseline, example), "merged": count_layers(merged["progressive"], example)}
assert layers["merged"]["weight"] == layers["baseline"]["weight"] - 2 * k  # three convs per pruned block become one
for name, c in layers.items():
    print(f"{name:9s} weight layers {c['weight']:2d}, norms {c['norm']:2d}, activations {c['act']:2d}, total {c['total']:2d}")
print("merged == unmerged subnet, both arms: relative error < 1e-5, identical test accuracy")

# %% [markdown]
# ## 9. Where the speed comes from
#
# The merged model runs fewer layers, but it also differs from the baseline in two other ways, and each could
# explain a speed-up on its own. The benchmark `benchmarks/ch06_updp_latency.py` therefore times **four forms of the
# same network** (batch 128, the pruned blocks spread over the depth), calling them in turn round after round so
# that load from other programs hits all four alike:
#
# 1. `baseline`: every block full;
# 2. `norm_swap`: the pruned blocks at $\lambda = 0$ — LayerNorm → BatchNorm, a BN and a GELU added after each
#    pruned block, the inner GELU kept;
# 3. `activation_removed`: the pruned blocks at $\lambda = 1$, unmerged — the inner GELU gone;
# 4. `merged`: the pruned blocks folded into one conv → GELU.
#
# The steps 1 → 2 → 3 → 4 split the gain. There is one measurement: this chapter reads the benchmark's JSON rather
# than timing on its own, and shows the rows for its own thread count. (The same baseline timed with one thread
# and with two gives two different numbers, so the JSON holds both thread counts, measured in the same run, and
# the table below says which one it shows.) Latency does not depend on the weights, so the benchmark builds each model
# from the preset with random weights. Regenerate it with `python benchmarks/ch06_updp_latency.py`.

# %% tags=["nbval-ignore-output"]
from minillm.core.bench import read_results, results_path
from minillm.core.paths import project_root


def chapter_result(folder, name: str, command: str) -> dict:
    """This profile's result on this device; else this profile's CPU result; else the tiny CPU one (said so)."""
    for profile, device in ((ctx.profile.name, ctx.device.type), (ctx.profile.name, "cpu"), ("tiny", "cpu")):
        path = results_path(name, profile, device, folder)
        if path.exists():
            if (profile, device) != (ctx.profile.name, ctx.device.type):
                print(f"[no {ctx.profile.name}-profile result on {ctx.device.type} yet: showing {path.name}; "
                      f"produce it with `{command}`]")
            return read_results(path, command)
    return read_results(results_path(name, ctx.profile.name, ctx.device.type, folder), command)


bench = chapter_result(project_root() / "benchmarks" / "results", "ch06_updp_latency", "python benchmarks/ch06_updp_latency.py")
threads = str(torch.get_num_threads()) if str(torch.get_num_threads()) in bench["threads"] else min(bench["threads"])
clock = "cpu" if bench["machine"]["device_type"] == "cpu" else "wall"  # on a GPU only the wall clock means anything
key = {"cpu": "cpu_ms_median", "wall": "ms_per_batch"}[clock]
print(f"measured on {bench['machine']['device_name']}, batch {bench['batch']}, {bench['rounds']} interleaved rounds, "
      f"load average {bench['load_average']['before'][0]:.1f} (2 cores), {bench['created']}")
for arch in ("cnn", "vit"):
    rows = bench["threads"][threads][arch]["models"]
    print(f"\n{arch.upper()}, {threads} thread(s): {'wall ms':>10s} {'CPU ms':>8s} {'weight layers':>14s} {'all layers':>11s}")
    for name, row in rows.items():
        print(f"  {name:19s} {row['ms_per_batch']:10.2f} {row['cpu_ms_median']:8.2f} {row['layers']['weight']:14d} "
              f"{row['layers']['total']:11d}")
if bench["profile"] == ctx.profile.name:  # the benchmark timed this chapter's architecture
    timed = bench["threads"][threads]["cnn"]["models"]
    assert timed["baseline"]["layers"] == layers["baseline"] and timed["merged"]["layers"] == layers["merged"]
    assert sum(bench["threads"][threads]["cnn"]["mask"]) == k

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
colors = ["tab:gray", "tab:orange", "tab:olive", "tab:green"]
for ax, arch in zip(axes, ("cnn", "vit")):
    for t, offset in zip(sorted(bench["threads"]), (-0.2, 0.2)):
        rows = bench["threads"][t][arch]["models"]
        ax.bar(np.arange(4) + offset, [rows[m][key] for m in rows], width=0.38, color=colors,
               alpha=1.0 if t == threads else 0.45, edgecolor="black", label=f"{t} thread(s)")
    ax.set_xticks(range(4), ["baseline", "norm swap\n(λ = 0)", "activation\nremoved", "merged"], fontsize=8)
    ax.set(title=f"{arch.upper()}: batch of {bench['batch']} (one bar per thread count; {threads} darker)",
           ylabel=f"ms per batch ({'CPU time' if clock == 'cpu' else 'wall clock'})")
    ax.title.set_fontsize(9)
fig.suptitle(f"Where UPDP's speed comes from, on {bench['machine']['device_name']} (median of interleaved rounds)")
plt.tight_layout()
plt.show()

# %% tags=["nbval-ignore-output"]
def step_deltas(arch: str) -> dict[str, float]:
    """Change in ms per batch at each step (negative = faster), and the merge's share of the whole change."""
    split = bench["threads"][threads][arch]["split"][clock]
    assert abs(sum(row["share_of_gain"] for row in split.values()) - 1.0) < 1e-9  # the steps add up to the whole
    return {step: -row["ms_saved"] for step, row in split.items()} | {"merge_share": split["merge"]["share_of_gain"]}


cnn_steps, vit_steps = step_deltas("cnn"), step_deltas("vit")
for arch, deltas in (("CNN", cnn_steps), ("ViT", vit_steps)):
    print(f"{arch}, {clock} clock: change per step (ms per batch): norm swap {deltas['norm_swap']:+.2f}, activation "
          f"removal {deltas['activation_removal']:+.2f}, merge {deltas['merge']:+.2f}; the merge is "
          f"{100 * deltas['merge_share']:.0f} % of the whole change")
for name, value in (("norm", cnn_steps["norm_swap"]), ("act", cnn_steps["activation_removal"]),
                    ("merge", cnn_steps["merge"])):
    glue(f"ch06_{name}_delta", f"{value:+.2f} ms", display=False)
glue("ch06_merge_share", f"{100 * cnn_steps['merge_share']:.0f}", display=False)
glue("ch06_speedup", f"{bench['threads'][threads]['cnn']['speedup_merged_vs_baseline'][clock]:.2f}", display=False)
glue("ch06_vit_speedup", f"{bench['threads'][threads]['vit']['speedup_merged_vs_baseline'][clock]:.2f}", display=False)
glue("ch06_speedup_wall", f"{bench['threads'][threads]['cnn']['speedup_merged_vs_baseline']['wall']:.2f}", display=False)
glue("ch06_clock", {"cpu": "CPU time per call", "wall": "wall-clock time"}[clock], display=False)
glue("ch06_bench_device", bench["machine"]["device_name"], display=False)
glue("ch06_bench_threads", threads, display=False)

# %% [markdown]
# Read the CNN's table step by step, at {glue:text}`ch06_bench_threads` thread(s) in {glue:text}`ch06_clock`: the
# norm swap changed the time per batch by {glue:text}`ch06_norm_delta`, removing the inner activations by
# {glue:text}`ch06_act_delta`, and the merge by {glue:text}`ch06_merge_delta`, which is
# {glue:text}`ch06_merge_share` % of the whole change. That is what
# the layer counts predict: BatchNorm costs about what LayerNorm costs, and the swap *adds* a BN and a GELU after each
# pruned block, so the swap alone cannot speed anything up; removing a GELU saves one element-wise pass per pruned
# block; the merge removes two convolutions, a norm and the residual addition per pruned block. The steps before the
# merge are not there for speed: they are what makes the merge possible. On a CPU the chapter reads the CPU column
# (process time per call): when other programs share the machine, as they did while this JSON was measured (see its
# load average above), the wall clock also counts the time this process waited for a core. On the wall clock the
# merged CNN was {glue:text}`ch06_speedup_wall`× faster than the baseline.

# %% [markdown]
# ## 10. Does the supernet pick the subnets that fine-tune best?
#
# The search trusts that a subnet which scores well *inside the supernet* will also fine-tune well on its own. The
# paper checks this on a handful of ResNet-34 subnets (its Table 5). With the tiny profile's 20 candidates we can check it on all of
# them: the study `studies/ch06_subnet_ranking.py` repeats, for each of several seeds, the whole pipeline —
# baseline, supernet, the fitness of every candidate subnet, the genetic search — and then fine-tunes **every** subnet from
# the baseline, progressively and directly, with the chapter's settings. It took {glue:text}`ch06_study_cpu_min`
# minutes of CPU time, too long for this page, so the page reads its JSON (`tests/prune/test_ch06_study.py` regenerates a two-seed miniature to
# keep the pipeline honest). Per seed we compute the rank correlation (Spearman's $\rho$) between supernet fitness
# and fine-tuned test accuracy over the candidate subnets; the seed is the unit that repeats, so the interval is a
# bootstrap over seeds.

# %%
from minillm.core.claims import verdict
from minillm.prune import (assert_fitness_predicts_finetuning, assert_progressive_beats_direct,
                           assert_search_pick_beats_average, spearman)
from minillm.prune.study import interval

study = chapter_result(project_root() / "studies" / "results", "ch06_subnet_ranking",
                       "python studies/ch06_subnet_ranking.py")
summary = study["summary"]
test_n = study["seeds"][0]["test_examples"]
print(f"{summary['seeds']} seeds × {summary['candidates']} subnets × 2 arms ({study['data']}); "
      f"one test image = {100 / test_n:.2f} points")
print(f"{'seed':>4s} {'baseline':>8s} {'ρ(fitness, prog.)':>17s} {'ρ(fitness, direct)':>18s} "
      f"{'search scored':>13s} {'pick rank: fitness':>18s} {'fine-tuned':>10s}")
for run, s in zip(study["seeds"], summary["per_seed"]):
    print(f"{s['seed']:4d} {run['baseline_test_acc']:8.3f} {s['spearman_progressive']:17.2f} {s['spearman_direct']:18.2f} "
          f"{s['searched']:9d} / {s['candidates']} {s['pick_rank_fitness']:18.1f} {s['pick_rank_finetuned']:10.1f}")
rho = interval(summary["spearman_progressive"])
pick_gap = interval(summary["pick_minus_mean"])
print(f"\nSpearman ρ(fitness, progressive fine-tuned accuracy): {rho.format('.2f')} (95 % bootstrap over seeds)")
print(f"  the same subnets' fine-tuned accuracy, seed against seed: mean ρ {summary['seed_to_seed_spearman']:.2f}")
print(f"searched subnet minus the average subnet, fine-tuned: {pick_gap.format('.2f', 100, ' pt')}")
print(f"  search's pick ranks {interval(summary['pick_rank_finetuned']).format('.1f')} of {summary['candidates']} after fine-tuning")
seed_note = (f"Each interval is a 95 % bootstrap over the {summary['seeds']} seeds." if summary["seeds"] >= 5 else
             f"With only {summary['seeds']} seeds, a bootstrap interval is no more than the range of the seeds' "
             "values: it describes the seeds that ran, and more seeds (the study's `--seeds`) are needed before it "
             "bounds the effect.")
print(seed_note)
assert_fitness_predicts_finetuning(summary)
_ = assert_search_pick_beats_average(summary)  # returns the interval it checked

# %%
runs = study["seeds"]
cols = min(4, len(runs))
fig, axes = plt.subplots((len(runs) + cols - 1) // cols, cols, figsize=(2.6 * cols, 2.3 * ((len(runs) + cols - 1) // cols)),
                         sharex=False, sharey=False, squeeze=False)
for ax, run, s in zip(axes.flat, runs, summary["per_seed"]):
    pick = run["masks"].index(run["search"]["best"])
    ax.scatter(run["fitness"], np.array(run["progressive"]) * 100, s=12, color="tab:blue")
    ax.scatter([run["fitness"][pick]], [run["progressive"][pick] * 100], s=40, color="tab:red", zorder=3)
    ax.set_title(f"seed {run['seed']}: ρ = {s['spearman_progressive']:.2f}", fontsize=8)
    ax.tick_params(labelsize=7)
for ax in axes.flat[len(runs):]:
    ax.axis("off")
fig.supxlabel("supernet fitness (validation accuracy)", fontsize=9)
fig.supylabel("test accuracy after fine-tuning (%)", fontsize=9)
fig.suptitle("Every subnet of every seed: fitness against fine-tuned accuracy (red: the search's pick)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# Which blocks matter? Averaging over the subnets that prune a block, minus those that keep it, gives each block's
# cost of being pruned after fine-tuning, per seed; the interval is again a bootstrap over seeds. This split was not
# planned before the study ran: read it as a description of what the study found, not as a tested hypothesis.

# %%
from minillm.core.claims import bootstrap_ci, glue_interval

n_blocks = len(runs[0]["masks"][0].split())
cost = np.array([[np.mean([a for m, a in zip(r["masks"], r["progressive"]) if m.split()[i] == "P"])
                  - np.mean([a for m, a in zip(r["masks"], r["progressive"]) if m.split()[i] == "F"])
                  for i in range(n_blocks)] for r in runs]) * 100  # (seeds, blocks), points
block_cost = [bootstrap_ci(cost[:, i]) for i in range(n_blocks)]
for i, iv in enumerate(block_cost):
    print(f"pruning block {i + 1}: {iv.format('+.1f', unit=' pt')} fine-tuned accuracy")
worst = int(np.argmin([iv.estimate for iv in block_cost]))
keep = [[j for j, m in enumerate(r["masks"]) if m.split()[worst] == "F"] for r in runs]
rho_keep = bootstrap_ci([spearman([r["fitness"][j] for j in idx], [r["progressive"][j] for j in idx])
                         for r, idx in zip(runs, keep)])
print(f"among the {len(keep[0])} subnets that keep block {worst + 1}: ρ(fitness, fine-tuned) {rho_keep.format('.2f')}")
glue("ch06_worst_block", f"{worst + 1}", display=False)
glue_interval("ch06_worst_cost", block_cost[worst], ".1f")
glue("ch06_keep_count", f"{len(keep[0])}", display=False)
glue_interval("ch06_rho_keep", rho_keep, ".2f")

# %% [markdown]
# ### Progressive against direct, over every subnet
#
# The same study fine-tuned each subnet twice, from the same baseline with the same data order, so the two arms
# pair up. Per seed we average progressive − direct over all the subnets; the interval is a paired bootstrap over
# seeds.

# %%
gain = interval(summary["progressive_minus_direct"])
pick_gain = interval(summary["pick_progressive_minus_direct"])
print(f"progressive − direct, mean over all subnets: {gain.format('.2f', 100, ' pt')} (paired bootstrap over seeds)")
print(f"  on the search's pick only: {pick_gain.format('.2f', 100, ' pt')}")
print(f"  {verdict(gain, 'progressive higher', 'direct higher')}")
assert_progressive_beats_direct(summary)
diffs = np.array([np.array(r["progressive"]) - np.array(r["direct"]) for r in runs]) * test_n  # in test images
print(f"per subnet and seed ({diffs.size} pairs): progressive ahead in {(diffs > 0).sum()}, tied in "
      f"{(diffs == 0).sum()}, behind in {(diffs < 0).sum()}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
axes[0].errorbar([0], [gain.estimate * 100], yerr=[[100 * (gain.estimate - gain.low)], [100 * (gain.high - gain.estimate)]],
                 fmt="o", color="black", capsize=6, label="mean and 95 % interval")
axes[0].scatter(np.linspace(-0.15, 0.15, len(runs)) + 0.4, [s["progressive_minus_direct"] * 100 for s in summary["per_seed"]],
                color="tab:blue", label="one seed (mean over subnets)")
axes[0].axhline(0, color="gray", lw=0.8)
axes[0].set(xlim=(-0.5, 1), xticks=[], ylabel="progressive − direct (points)", title="Mean over all subnets")
axes[0].legend(fontsize=7)
lo, hi = int(diffs.min()), int(diffs.max())
axes[1].hist(diffs.ravel(), bins=np.arange(lo - 0.5, hi + 1.5), color="tab:blue")
axes[1].axvline(0, color="gray", lw=0.8)
axes[1].set(xlabel="progressive − direct (test images)", ylabel="subnet × seed pairs", title="Every pair")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 11. The same stages on a vision transformer
#
# In a ViT block the attention half contains a softmax and cannot be made linear, but the MLP half can:
# $x + \mathrm{fc}_2(\mathrm{GELU}(\mathrm{fc}_1(\mathrm{LN}(x))))$. Following the paper's treatment of DeiT, the
# pruned block replaces that LayerNorm by a BatchNorm over tokens, moves the GELU to the identity progressively, and
# adds a BN and a GELU after the block. At $\lambda = 1$, BN → fc₁ → fc₂ → +x → BN is one $C \times C$ linear layer:
# the MLP's two wide layers (here $C \to 2C \to C$) become one. `minillm.prune.run_updp` runs all four
# stages on any prunable model:

# %% tags=["nbval-ignore-output"]
from minillm.prune import TinyViT, run_updp

torch.manual_seed(ctx.seed)
with mlflow_run("ch06-updp", run_name="vit-all-stages", params=cfg.vit.__dict__) as tracker:
    vit = run_updp(TinyViT(cfg.vit).to(ctx.device), data, cfg, pruned_blocks=cfg.vit.depth // 2, tracker=tracker)
for name in ("baseline", "direct_merged", "progressive_merged"):
    print(f"ViT {name:20s} test accuracy {vit.accuracy[name]:.3f}   weight layers {vit.layers[name]['weight']}")
print(f"searched subnet [{describe_mask(vit.search.best)}] ({len(vit.search.evaluated)} subnets scored); "
      "merged == unmerged: relative error < 1e-5")
assert max(vit.merge_rel_err.values()) < 1e-5
assert vit.layers["progressive_merged"]["weight"] == vit.layers["baseline"]["weight"] - cfg.vit.depth // 2
ctx.profile.assert_full_length(vit.accuracy["baseline"] > 0.85, "the baseline ViT should reach 85 %")

# %% [markdown]
# ## 12. What we measured

# %% tags=["nbval-ignore-output"]
glue("ch06_baseline_acc", f"{baseline_acc:.3f}", display=False)
glue("ch06_direct_acc", f"{merged_acc['direct']:.3f}", display=False)
glue("ch06_prog_acc", f"{merged_acc['progressive']:.3f}", display=False)
glue("ch06_layers_base", f"{layers['baseline']['weight']}", display=False)
glue("ch06_layers_merged", f"{layers['merged']['weight']}", display=False)
glue("ch06_k", f"{k}", display=False)
glue("ch06_searched", f"{len(ga.evaluated)}", display=False)
glue("ch06_candidates", f"{len(all_masks(n, k))}", display=False)
glue("ch06_seeds", f"{summary['seeds']}", display=False)
glue("ch06_seed_note", seed_note, display=False)
glue("ch06_study_searched", f"{summary['searched_mean']:.1f}", display=False)
glue("ch06_seed_agreement", f"{summary['seed_to_seed_spearman']:.2f}", display=False)
glue_interval("ch06_rho", rho, ".2f")
glue_interval("ch06_pick_gap", pick_gap, ".2f", scale=100)
glue_interval("ch06_pick_rank", interval(summary["pick_rank_finetuned"]), ".1f")
glue_interval("ch06_gain", gain, ".2f", scale=100)
glue_interval("ch06_pick_gain", pick_gain, ".2f", scale=100)
glue("ch06_gain_verdict", verdict(gain, "progressive training scored higher", "direct pruning scored higher"), display=False)
glue("ch06_one_image", f"{100 / test_n:.2f}", display=False)
glue("ch06_test_n", f"{test_n}", display=False)
glue("ch06_study_cpu_min", f"{study['cpu_s'] / 60:.0f}", display=False)
glue("ch06_vit_base", f"{vit.accuracy['baseline']:.3f}", display=False)
glue("ch06_vit_direct", f"{vit.accuracy['direct_merged']:.3f}", display=False)
glue("ch06_vit_prog", f"{vit.accuracy['progressive_merged']:.3f}", display=False)
print(f"this run: baseline {baseline_acc:.3f}, direct {merged_acc['direct']:.3f}, progressive {merged_acc['progressive']:.3f}; "
      f"study: progressive − direct {gain.format('.2f', 100, ' pt')}, ρ {rho.format('.2f')}")
assert rho.n == gain.n == summary["seeds"] >= 2

# %% [markdown]
# **The merge is exact.** Pruning {glue:text}`ch06_k` of the baseline CNN's blocks and merging leaves
# {glue:text}`ch06_layers_merged` weight layers instead of {glue:text}`ch06_layers_base`, and the merged models
# compute what their unmerged subnets compute (relative error below $10^{-5}$), so a merged model's accuracy *is*
# its subnet's accuracy. On {glue:text}`ch06_bench_device` with {glue:text}`ch06_bench_threads` thread(s) the merged
# CNN runs {glue:text}`ch06_speedup`× faster than the baseline (the ViT {glue:text}`ch06_vit_speedup`×), and the merge
# itself accounts for {glue:text}`ch06_merge_share` % of the CNN's gain: swapping the norms and removing the
# activations are what make the merge possible, not what makes the model fast.
#
# **The search.** The genetic search scored {glue:text}`ch06_searched` of the {glue:text}`ch06_candidates`
# candidate subnets in this run (on average {glue:text}`ch06_study_searched` in the study): with a space this small
# it is close to enumerating it, and the saving it is built for only appears in deeper networks. Over
# {glue:text}`ch06_seeds` seeds, supernet fitness and fine-tuned accuracy have a rank correlation of
# {glue:text}`ch06_rho` over the {glue:text}`ch06_candidates` subnets. {glue:text}`ch06_seed_note` Much of that agreement comes from one
# block: pruning block {glue:text}`ch06_worst_block` changes the fine-tuned accuracy by {glue:text}`ch06_worst_cost`
# points on average, and the supernet's fitness sees it too; among the {glue:text}`ch06_keep_count` subnets that keep
# that block, the rank correlation is {glue:text}`ch06_rho_keep` (a split we made after seeing the study, so a
# description rather than a test). The searched subnet fine-tunes {glue:text}`ch06_pick_gap` points above the average
# subnet of its seed and ranks {glue:text}`ch06_pick_rank` of {glue:text}`ch06_candidates` after fine-tuning
# (1 = best): the fitness steers the search away from the subnets that fine-tune badly, which is what the paper's
# Table 5 shows on its handful of subnets, and our numbers say how far the ranking holds beyond that. For scale, the
# fine-tuned accuracies of the same subnets agree from one seed to the next with a rank correlation of
# {glue:text}`ch06_seed_agreement`; on {glue:text}`ch06_test_n` test images one image is worth
# {glue:text}`ch06_one_image` points, so part of the ordering after fine-tuning is noise, which caps how well any
# fitness can predict it.
#
# **Progressive against direct.** In the walk-through run above the baseline reached
# {glue:text}`ch06_baseline_acc`, the directly pruned subnet {glue:text}`ch06_direct_acc` and the progressive one
# {glue:text}`ch06_prog_acc` — one seed of one subnet, which says little. Over every subnet and
# {glue:text}`ch06_seeds` seeds, progressive minus direct is {glue:text}`ch06_gain` points (on the searched subnet
# alone {glue:text}`ch06_pick_gain`): {glue:text}`ch06_gain_verdict`. The paper reports 0.3 to 0.8 points for its
# subnets on ImageNet (its Table 6). Here a single pair of runs differs by a few test images either way (the histogram
# above), so one comparison, like the walk-through's, cannot show the effect; the average over
# {glue:text}`ch06_candidates` subnets and {glue:text}`ch06_seeds` seeds is what can show it, given enough seeds
# (see the note on seeds above). The ViT gives
# {glue:text}`ch06_vit_base` (baseline), {glue:text}`ch06_vit_direct` (direct) and {glue:text}`ch06_vit_prog`
# (progressive) in one run, which is one observation, not an effect size. The full profile (Fashion-MNIST, deeper
# models, meant for a GPU) is the place to see whether these numbers hold at a larger scale.
#
# ## Exercises
#
# The {doc}`exercises <../exercises/ch06_updp>` ask you to fuse a BatchNorm that comes *before* a conv, merge a
# depthwise k×k and a 1×1 (the ConvNeXt order) by broadcasting, fold a whole RepVGG block into one conv, design a
# smoother λ schedule, and write the rank correlation of section 10 with its ties handled. Worked answers are in
# `solutions/ch06_updp.ipynb`.
