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
# # Chapter 5: Post-training quantization — from OBQ to GPTQ, and a Triton kernel
#
# Generating one token reads **every weight of the model once**. At batch size 1 that makes decoding a
# memory-bandwidth problem: a model stored in 4 bits instead of 16 moves a quarter of the bytes per token. The
# question is how to round a trained network's weights onto so few levels without wrecking it.
#
# Rounding each weight to its nearest level (RTN) is the obvious answer and, at 3–4 bits, a poor one. This chapter
# builds the line of work that fixed it, each step verified against the one before:
#
# 1. a **layer-wise objective**: keep each linear layer's *outputs* close, which brings in the layer's Hessian
#    $H = \tfrac{2}{n}\sum x x^\top$ collected from calibration data;
# 2. **OBQ** {cite}`frantar2022obc`, which quantizes one weight at a time and lets the others compensate, using the
#    Optimal Brain Surgeon update {cite}`hassibi1993obs`;
# 3. **GPTQ** {cite}`frantar2023gptq`, built from OBQ step by step — one column order for all rows, lazy block
#    updates, a Cholesky reformulation — then act-order and grouped grids;
# 4. whole-model quantization of chapter 1's GPT and of a pretrained sentence encoder, with a perplexity/accuracy table;
# 5. **int32 packing** and a **Triton kernel** that multiplies with the packed weights directly.

# %% tags=["nbval-ignore-output"]
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton's CPU interpreter: set BEFORE any kernel module is imported

import copy
import math
import time

import matplotlib.pyplot as plt
from myst_nb import glue

from minillm.core.notebook import chapter_setup

ctx = chapter_setup("Chapter 5: OBQ -> GPTQ post-training quantization", minutes_tiny=4, minutes_full=20)


# %% [markdown]
# ## 1. Why bits matter: decoding reads every weight
#
# A matrix–vector product $y = x W$ with $W \in \mathbb{R}^{K \times N}$ does $2KN$ flops on $KN$ weights: one
# multiply–add per weight loaded. A GPU does hundreds of flops in the time it loads one byte, so at batch size 1 the
# time per token is essentially *bytes of weights / memory bandwidth*. Storing $b$-bit codes plus one scale and zero
# point per group of $g$ weights costs $b + (16 + b)/g$ bits per weight:

# %%
def bits_per_weight(bits, groupsize):
    return bits + (16 + bits) / groupsize  # fp16 scale + b-bit zero point per group

params = 7e9
for name, bpw in [("fp16", 16.0), ("int8, g128", bits_per_weight(8, 128)), ("int4, g128", bits_per_weight(4, 128)),
                  ("int3, g128", bits_per_weight(3, 128))]:
    print(f"{name:11s} {bpw:6.3f} bits/weight   7B model: {params * bpw / 8 / 2**30:5.1f} GiB   "
          f"speed-up bound vs fp16: {16 / bpw:4.2f}x")
glue("ch05_int4_bound", f"{16 / bits_per_weight(4, 128):.2f}", display=False)

# %% [markdown]
# At 4 bits with groups of 128 the weights shrink by {glue:text}`ch05_int4_bound`× — the upper bound on the decode
# speed-up, if the kernel can unpack as fast as it loads (section 8).
#
# ## 2. The grid: min–max uniform quantization
#
# Every method here rounds onto the same grid. For a row (or a group of columns in a row) with range
# $[\min(w, 0), \max(w, 0)]$, $b$ bits give $2^b$ levels:
#
# $$
# s = \frac{\max w - \min w}{2^b - 1}, \quad z = \left\lfloor -\frac{\min w}{s} \right\rceil, \quad
# q = \mathrm{clamp}\left(\left\lfloor \frac{w}{s}\right\rceil + z, 0, 2^b-1\right), \quad \hat w = s\,(q - z).
# $$
#
# The integer zero point $z$ makes $w = 0$ exact. The *symmetric* variant fixes $z = 2^{b-1}$ and uses
# $[-\max|w|, \max|w|]$. `minillm.quant.quantizer` implements it; **round-to-nearest (RTN)** is just this rounding:

# %%
from minillm.quant.quantizer import fake_quantize, find_params

w = torch.tensor([[-0.31, -0.02, 0.0, 0.07, 0.12, 0.44]])
for bits in (4, 3, 2):
    scale, zero = find_params(w, bits)
    print(f"{bits}-bit  scale {scale.item():.4f}  zero {zero.item():2.0f}  ->  "
          f"{[round(v, 3) for v in fake_quantize(w, scale[:, None], zero[:, None], bits)[0].tolist()]}")

# %% [markdown]
# ## 3. The model to quantize
#
# We quantize chapter 1's character-level GPT trained on Shakespeare. The notebook trains it with
# `minillm.gpt.train.train_lm` and the profile's presets the first time (about two CPU minutes with the tiny profile)
# and caches the weights as safetensors (`minillm.core.checkpoint`), so re-running the chapter loads them.

# %% tags=["nbval-ignore-output"]
from dataclasses import asdict

from minillm.data.lm_batches import TokenSplits, get_batch
from minillm.core.checkpoint import save_model
from minillm.gpt import GPT, LM_TRAIN_FULL, LM_TRAIN_TINY, gpt_config, load_gpt
from minillm.data.shakespeare import cache_dir, load_shakespeare
from minillm.data.char_tokenizer import CharTokenizer
from minillm.core.tracking import mlflow_run
from minillm.gpt.train import evaluate_loss, train_lm

text = load_shakespeare()
tokenizer = CharTokenizer.from_text(text)
splits = TokenSplits.from_tokens(tokenizer.encode(text), val_fraction=0.1)
gpt_cfg = gpt_config(ctx.profile.pick("gpt-tiny", "gpt-shakespeare"), tokenizer.vocab_size)
checkpoint = cache_dir() / "ch05" / f"gpt-{ctx.profile.name}.safetensors"
if checkpoint.exists():
    model = load_gpt(checkpoint, ctx.device)
    print(f"loaded {checkpoint}")
else:
    model = GPT(gpt_cfg).to(ctx.device)
    with mlflow_run("ch05-gpt", run_name=f"gpt-{ctx.profile.name}", params=asdict(gpt_cfg)) as tracker:
        history = train_lm(model, splits, ctx.profile.pick(LM_TRAIN_TINY, LM_TRAIN_FULL), ctx.device, tracker)
    save_model(model, checkpoint)
    print(f"trained in {history.wall_seconds:.0f} s, saved {checkpoint}")
model.eval()
assert model.config == gpt_cfg, "the cached checkpoint was trained with another config: delete it to retrain"
val_slice = splits.val[:ctx.profile.pick(20_000, len(splits.val))]  # tiny profile: the first 20k validation characters
fp32_loss = evaluate_loss(model, val_slice, gpt_cfg.block_size, device=ctx.device)
print(f"{model.num_params():,} parameters; validation loss {fp32_loss:.3f} nats/char, perplexity {math.exp(fp32_loss):.3f}")
assert fp32_loss < 1.9

# %% [markdown]
# ## 4. The layer-wise objective and its Hessian
#
# Quantization should preserve what a layer *computes*, not its weights. For a linear layer $W$ ($N \times K$:
# out × in) fed calibration inputs $X$ ($K \times n$), find the grid point $\hat W$ minimising the output error
#
# $$
# \| W X - \hat W X \|_2^2 \;=\; \tfrac{n}{2}\,\mathrm{tr}\!\big((W - \hat W)\, H\, (W - \hat W)^\top\big),
# \qquad H = \tfrac{2}{n} X X^\top .
# $$
#
# $H$ is the Hessian of this quadratic loss, the same for every output row; it says which *input directions* the
# layer actually sees. RTN minimises $\|W - \hat W\|_F^2$, i.e. it pretends $H = I$. We collect $H$ with a forward
# hook from 128 random training windows; `HessianAccumulator` keeps a running mean so batches can stream:

# %% tags=["nbval-ignore-output"]
from minillm.quant.hessian import HessianAccumulator, layer_error
from minillm.quant.rtn import rtn_quantize

calib_gen = torch.Generator().manual_seed(0)
calib = [get_batch(splits.train, gpt_cfg.block_size, 16, calib_gen, ctx.device)[0] for _ in range(8)]  # 8 x (16, T)

layer = model.blocks[0].attn.c_attn  # (3C, C): the query/key/value projection of block 0
acc, handle = HessianAccumulator.attach(layer)
with torch.no_grad():
    for xb in calib:
        model(xb)
handle.remove()
W, H = layer.weight.data.float(), acc.H
print(f"W {tuple(W.shape)}, H {tuple(H.shape)} from {acc.n:,} input rows")

# the objective is the output error: check it on the calibration inputs themselves
X = torch.cat([xb for xb in calib])
Q_rtn4, _ = rtn_quantize(W, bits=4)
with torch.no_grad():
    inputs = []
    h = layer.register_forward_hook(lambda m, i, o: inputs.append(i[0].reshape(-1, W.shape[1])))
    model(X)
    h.remove()
Xin = torch.cat(inputs)  # (n, K)
direct = ((Xin @ (W - Q_rtn4).T) ** 2).sum().item() * 2 / Xin.shape[0]
assert abs(layer_error(W, Q_rtn4, H) - direct) / direct < 1e-3
eig = torch.linalg.eigvalsh(H.double())
print(f"H eigenvalues: largest {eig.max().item():.3g}, median {eig.median().item():.3g}, "
      f"largest/median {(eig.max() / eig.median()).item():.0f}: far from the identity RTN assumes")

# %% [markdown]
# ## 5. OBQ: one weight at a time, the others compensate
#
# The objective splits into independent rows $w$ (length $K$), each a quadratic with Hessian $H$. Optimal Brain
# Surgeon {cite}`hassibi1993obs` answers: if weight $p$ is forced to $q(w_p)$, the best change of the remaining
# (unquantized) weights $F$ and the error it leaves are
#
# $$
# \delta_F = -\frac{w_p - q(w_p)}{[H_F^{-1}]_{pp}}\,(H_F^{-1})_{:,p}, \qquad
# \Delta \mathcal{L} = \frac{(w_p - q(w_p))^2}{[H_F^{-1}]_{pp}} .
# $$
#
# **OBQ** {cite}`frantar2022obc` applies this greedily: quantize the weight with the smallest $\Delta\mathcal{L}$,
# update the rest, remove $p$ from $H_F^{-1}$ by one step of Gaussian elimination,
#
# $$
# H^{-1}_{F \setminus p} = H_F^{-1} - \frac{(H_F^{-1})_{:,p}\,(H_F^{-1})_{p,:}}{[H_F^{-1}]_{pp}},
# $$
#
# and repeat $K$ times. Written out for one row:

# %% tags=["package-twin"]
import torch

from minillm.quant.quantizer import fake_quantize


def obq_row(w, Hinv, scale, zero, bits):
    # Greedy OBQ of one row w (K,) with inverse Hessian Hinv (K, K); the grid (scale, zero) is fixed.
    w, Hinv = w.clone(), Hinv.clone()
    remaining = torch.ones_like(w, dtype=torch.bool)
    for _ in range(w.numel()):
        q = fake_quantize(w, scale, zero, bits)                           # (K,) nearest grid points
        cost = ((w - q) ** 2 / Hinv.diag()).masked_fill(~remaining, float("inf"))
        p = int(cost.argmin())                                            # cheapest weight to quantize
        err = (w[p] - q[p]) / Hinv[p, p]
        w -= err * Hinv[:, p]                                             # the others compensate
        w[p] = q[p]
        Hinv -= torch.outer(Hinv[:, p], Hinv[p, :]) / Hinv[p, p]         # eliminate p
        remaining[p] = False
    return w


# %% tags=["nbval-ignore-output"]
from minillm.quant.hessian import inverse_hessian, prepare_hessian
from minillm.quant.obq import obq_quantize

bits = 4
Wd, Hd = prepare_hessian(W, H, percdamp=0.01)  # dead columns fixed, 1 % damping
Hinv = inverse_hessian(Hd, 0.01)
scale, zero = find_params(Wd, bits)
rows = [obq_row(Wd[i], Hinv, scale[i], zero[i], bits) for i in range(4)]
t0 = time.perf_counter()
Q_obq, _ = obq_quantize(W, H, bits, order="greedy")  # all rows, batched
obq_seconds = time.perf_counter() - t0
assert torch.allclose(torch.stack(rows), Q_obq[:4], atol=1e-6)
err_rtn, err_obq = layer_error(W, Q_rtn4, H), layer_error(W, Q_obq, H)
print(f"layer error  RTN {err_rtn:.4g}   OBQ {err_obq:.4g}   (OBQ / RTN = {err_obq / err_rtn:.3f})")
assert err_obq < 0.8 * err_rtn

# %% [markdown]
# OBQ is excellent and slow: every row has its own order, hence its own $H^{-1}$ to downdate, $O(NK^3)$ time in
# all. On a $4096 \times 4096$ layer that is hours. GPTQ keeps the idea and removes the cost, in three steps.
#
# ## 6. GPTQ, step by step
#
# ### Step 1: one order for all rows
#
# Quantize the columns left to right, the same order in every row. Greedy order helps surprisingly little on large
# layers; a shared order means $H^{-1}$ is downdated once for all rows — a column at a time, all rows at once:

# %% tags=["package-twin"]
import torch

from minillm.quant.hessian import inverse_hessian, prepare_hessian
from minillm.quant.quantizer import fake_quantize, find_params


def gptq_sequential(W, H, bits, percdamp=0.01):
    # Arbitrary (left-to-right) order, explicit inverse-Hessian downdates: the straightforward algorithm.
    W, H = prepare_hessian(W, H, percdamp)
    Hinv = inverse_hessian(H, percdamp)
    scale, zero = find_params(W, bits)                                   # (N,) per output channel
    Q = torch.zeros_like(W)
    for i in range(W.shape[1]):
        Q[:, i] = fake_quantize(W[:, i], scale, zero, bits)
        err = (W[:, i] - Q[:, i]) / Hinv[i, i]                           # (N,)
        W[:, i + 1:] -= torch.outer(err, Hinv[i, i + 1:])                # every row compensates at once
        Hinv[i + 1:, i + 1:] -= torch.outer(Hinv[i + 1:, i], Hinv[i, i + 1:]) / Hinv[i, i]
    return Q


# %% [markdown]
# **Verify.** This must be exactly OBQ with its greedy choice replaced by "next column": `obq_quantize(...,
# order="sequential")` runs the per-row OBQ code above with $p$ forced to $0, 1, \dots, K-1$.

# %% tags=["nbval-ignore-output"]
Q_seq = gptq_sequential(W, H, bits)
Q_obq_seq, _ = obq_quantize(W, H, bits, order="sequential")
rel_obq_gptq = ((Q_obq_seq - Q_seq).norm() / Q_seq.norm()).item()
print(f"sequential OBQ vs one-order GPTQ: relative difference {rel_obq_gptq:.1e}")
assert rel_obq_gptq < 1e-5
err_seq = layer_error(W, Q_seq, H)
print(f"layer error  RTN {err_rtn:.4g}   OBQ (greedy) {err_obq:.4g}   sequential {err_seq:.4g}")

# %% [markdown]
# ### Step 2: Cholesky instead of downdates
#
# After removing columns $0..i-1$, the only part of $H^{-1}$ the algorithm ever reads is row $i$ from the diagonal
# on. Those rows are, up to a factor $\sqrt{[H^{-1}]_{ii}}$, the rows of the **upper Cholesky factor** $U$ of
# $H^{-1}$ ($H^{-1} = U^\top U$): eliminating variables one by one *is* a Cholesky factorisation. So we compute $U$
# once, with a numerically stable routine, instead of $K$ downdates whose rounding errors pile up (and can make
# $H^{-1}$ indefinite on large layers). Checking the identity on our layer:

# %% tags=["nbval-ignore-output"]
Hinv_down = inverse_hessian(Hd, 0.01)
U = torch.linalg.cholesky(inverse_hessian(Hd, 0.01), upper=True)  # (K, K)
worst = 0.0
for i in range(Hd.shape[0]):
    row = Hinv_down[i, i:] / Hinv_down[i, i].sqrt()
    worst = max(worst, ((row - U[i, i:]).abs().max() / U[i, i:].abs().max()).item())
    Hinv_down[i + 1:, i + 1:] -= torch.outer(Hinv_down[i + 1:, i], Hinv_down[i, i + 1:]) / Hinv_down[i, i]
print(f"max relative difference between downdated rows and Cholesky rows: {worst:.1e}")
assert worst < 1e-3

# %% [markdown]
# With $U$, the error of column $i$ is $(w_i - q_i)/U_{ii}$ and the update of the remaining columns is that error
# times $U_{i, i:}$.
#
# ### Step 3: lazy batches
#
# Column $i$'s update touches all later columns: $K$ rank-1 updates of an $N \times K$ matrix, a memory-bound
# pattern. But column $j$ only needs the updates of the columns before it *when it is quantized*. So GPTQ processes
# blocks of $B = 128$ columns: inside a block it updates only the block, and records the scaled errors $E$; when the
# block is done, one matrix product $W_{:, \text{later}} \mathrel{-}= E\, U_{\text{block}, \text{later}}$ applies
# them to the rest. The result is identical; the work becomes compute-bound matrix multiplication.

# %% tags=["package-twin"]
import torch

from minillm.quant.hessian import inverse_hessian, prepare_hessian
from minillm.quant.quantizer import fake_quantize, find_params


def gptq_blocked(W, H, bits, blocksize=128, percdamp=0.01):
    # GPTQ: Cholesky rows + lazy block updates (per-channel grid, natural order).
    W, H = prepare_hessian(W, H, percdamp)
    U = torch.linalg.cholesky(inverse_hessian(H, percdamp), upper=True)   # (K, K)
    scale, zero = find_params(W, bits)
    N, K = W.shape
    Q = torch.zeros_like(W)
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1, E1 = W[:, i1:i2].clone(), torch.zeros(N, i2 - i1)               # (N, B)
        for i in range(i2 - i1):
            q = fake_quantize(W1[:, i], scale, zero, bits)
            E1[:, i] = (W1[:, i] - q) / U[i1 + i, i1 + i]
            W1[:, i:] -= torch.outer(E1[:, i], U[i1 + i, i1 + i:i2])       # update inside the block only
            Q[:, i1 + i] = q
        W[:, i2:] -= E1 @ U[i1:i2, i2:]                                    # one lazy update for the block
    return Q


# %% tags=["nbval-ignore-output"]
from minillm.quant.gptq import gptq_quantize

Q_blocked = gptq_blocked(W, H, bits, blocksize=32)
Q_gptq, grid = gptq_quantize(W, H, bits, blocksize=32)  # the package: same algorithm + groups, act-order
for name, Q in [("blocked (notebook)", Q_blocked), ("gptq_quantize (package)", Q_gptq)]:
    rel = ((Q - Q_seq).norm() / Q_seq.norm()).item()
    print(f"{name:24s} vs step 1: relative difference {rel:.1e}")
    assert rel < 1e-5
err_gptq = layer_error(W, Q_gptq, H)
glue("ch05_obq_gptq_rel", f"{rel_obq_gptq:.1e}", display=False)

# %% [markdown]
# `gptq_quantize(W, H, bits=4, groupsize=-1, actorder=False, blocksize=128, percdamp=0.01)` returns `(Q, grid)`:
# `Q` the dequantized weight (float32, $N \times K$, original column order) and `grid` a `QuantGrid` with `scale`
# and `zero` of shape $(G, N)$ and `g_idx` ($K$,) naming each input column's group, so that
# `grid.dequantize(grid.codes(Q))` gives back `Q`. Sequential OBQ and GPTQ agree to
# {glue:text}`ch05_obq_gptq_rel` (relative).
#
# ### Damping, dead columns and a Hessian that is not positive definite
#
# Two repairs keep $H$ invertible. An input that is always zero (a *dead* column, $H_{kk} = 0$) gets $H_{kk}=1$ and
# weight 0. And a damping $\lambda = 1\%$ of the mean diagonal is added to every $H_{kk}$. With fewer calibration
# rows than input features, $H$ is singular; without damping GPTQ must refuse, and say what to do:

# %% tags=["nbval-ignore-output"]
from minillm.quant.hessian import NotPositiveDefiniteError

few = Xin[:16]  # 16 rows for 128 features: H has rank 16
H_few = 2 / 16 * few.T @ few
raised = False
try:
    gptq_quantize(W, H_few, bits, percdamp=0.0)
except NotPositiveDefiniteError as err:
    raised = True
    print("NotPositiveDefiniteError:", err)
assert raised, "a rank-16 Hessian of a 128-input layer must be refused without damping"
Q_few, _ = gptq_quantize(W, H_few, bits, percdamp=0.01)  # damping makes it solvable (but 16 rows are too few)
print(f"with 1% damping: layer error on the real H {layer_error(W, Q_few, H):.4g} vs {err_gptq:.4g} with full calibration")

# %% [markdown]
# ### The bar: GPTQ vs RTN on every trained layer
#
# GPTQ should cut the layer error of RTN substantially on real trained layers. Here is the ratio for every linear
# layer of the GPT (4 bits, per channel), each with its own Hessian from the same calibration windows:

# %% tags=["nbval-ignore-output"]
from minillm.quant.calibrate import linear_layers

accs = {name: HessianAccumulator.attach(m) for name, m in linear_layers(model.blocks).items()}
with torch.no_grad():
    for xb in calib:
        model(xb)
ratios = {}
for name, (acc_l, handle_l) in accs.items():
    handle_l.remove()
    Wl = linear_layers(model.blocks)[name].weight.data
    ratios[name] = layer_error(Wl, gptq_quantize(Wl, acc_l.H, 4)[0], acc_l.H) / layer_error(Wl, rtn_quantize(Wl, 4)[0], acc_l.H)
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.bar(range(len(ratios)), list(ratios.values()))
ax.axhline(0.8, color="k", ls="--", lw=1, label="bar: 0.8")
ax.set_xticks(range(len(ratios)), list(ratios), rotation=60, ha="right", fontsize=8)
ax.set_ylabel("GPTQ error / RTN error")
ax.set_title("4-bit per-channel layer error, GPTQ relative to RTN (lower is better)")
ax.legend()
plt.tight_layout()
plt.show()
print(f"demo layer blocks.0.attn.c_attn: GPTQ / RTN = {err_gptq / err_rtn:.3f}; "
      f"median over all layers {sorted(ratios.values())[len(ratios) // 2]:.3f}, worst {max(ratios.values()):.3f}")
assert err_gptq <= 0.8 * err_rtn, "bar: GPTQ layer error <= 0.8 x RTN on a real trained layer"
glue("ch05_bar_ratio", f"{err_gptq / err_rtn:.3f}", display=False)
glue("ch05_worst_ratio", f"{max(ratios.values()):.3f}", display=False)

# %% [markdown]
# On the demo layer GPTQ's error is {glue:text}`ch05_bar_ratio` of RTN's (the bar is 0.8); the worst layer reaches
# {glue:text}`ch05_worst_ratio`.
#
# ## 7. Act-order, groups and static groups
#
# * **Groups.** One scale per output channel must cover the channel's extreme weights. A grid per group of $g$
#   consecutive input columns (here $g = 32$) fits the range locally, for $(16 + b)/g$ extra bits per weight. GPTQ
#   computes each group's grid when it reaches the group's first column, from the weights *as updated so far*.
# * **Act-order.** Quantize columns by decreasing $H_{kk}$ (input energy): the columns that matter most are
#   quantized first, while many columns remain to absorb their error. The permutation is recorded in `g_idx`.
# * **Static groups.** With act-order, groups are formed in quantization order, so `g_idx` jumps around. Static
#   groups fix each group's grid from the original weights before any update: contiguous groups, but grids that
#   ignore the updates.

# %% tags=["nbval-ignore-output"]
mlp = model.blocks[1].mlp.c_proj  # (C, 4C): 512 input columns
H_mlp = accs["1.mlp.c_proj"][0].H
W_mlp = mlp.weight.data
rows_tbl = []
for bits_ in (4, 3):
    base = layer_error(W_mlp, rtn_quantize(W_mlp, bits_)[0], H_mlp)
    for label, kw in [("RTN", None), ("GPTQ", {}), ("GPTQ act-order", {"actorder": True}),
                      ("RTN g32", "g"), ("GPTQ g32", {"groupsize": 32}),
                      ("GPTQ g32 act-order", {"groupsize": 32, "actorder": True}),
                      ("GPTQ g32 act-order static", {"groupsize": 32, "actorder": True, "static_groups": True})]:
        if kw is None:
            Q = rtn_quantize(W_mlp, bits_)[0]
        elif kw == "g":
            Q = rtn_quantize(W_mlp, bits_, groupsize=32)[0]
        else:
            Q = gptq_quantize(W_mlp, H_mlp, bits_, **kw)[0]
        rows_tbl.append((bits_, label, layer_error(W_mlp, Q, H_mlp) / base))
print("blocks.1.mlp.c_proj, layer error relative to per-channel RTN at the same bits")
for bits_, label, rel in rows_tbl:
    print(f"  {bits_}-bit  {label:28s} {rel:6.3f}")
rel = {(b, l): r for b, l, r in rows_tbl}
assert rel[(4, "GPTQ g32 act-order")] < rel[(4, "GPTQ")] < 1.0 and rel[(3, "GPTQ g32 act-order")] < rel[(3, "GPTQ")]

# %% [markdown]
# ## 8. Whole models: sequential, layer by layer
#
# A model is quantized **block by block**. The calibration inputs are run up to the first block and captured; each
# block then collects the Hessians of its linear layers, quantizes them, and runs the calibration data through its
# *quantized* self to produce the next block's inputs — so later blocks are calibrated on what they will really see,
# earlier quantization errors included. Embeddings and the output head stay in full precision.
# `minillm.quant.calibrate.quantize_model` does this for any model whose blocks sit in an `nn.ModuleList`.

# %% tags=["nbval-ignore-output"]
from minillm.quant.calibrate import QuantConfig, quantize_model

calib_windows = torch.cat(calib)  # (128, T): 128 training windows of block_size characters
configs = [QuantConfig("rtn", 4), QuantConfig("gptq", 4), QuantConfig("gptq", 4, actorder=True),
           QuantConfig("rtn", 4, 32), QuantConfig("gptq", 4, 32, actorder=True),
           QuantConfig("rtn", 3), QuantConfig("gptq", 3), QuantConfig("gptq", 3, actorder=True),
           QuantConfig("rtn", 3, 32), QuantConfig("gptq", 3, 32, actorder=True)]
gpt_results = {"fp32": (math.exp(fp32_loss), 0.0)}
quantized = {}
with mlflow_run("ch05-gptq", run_name=f"gpt-{ctx.profile.name}") as tracker:
    for cfg in configs:
        qmodel = copy.deepcopy(model)
        report = quantize_model(qmodel, qmodel.blocks, calib_windows.split(32), cfg, progress=False)
        loss = evaluate_loss(qmodel, val_slice, gpt_cfg.block_size, device=ctx.device)
        gpt_results[cfg.label()] = (math.exp(loss), report.seconds)
        quantized[cfg.label()] = (qmodel, report)
        tracker.log_metrics({f"ppl {cfg.label()}".replace(" ", "_"): math.exp(loss)})
print(f"{'GPT on Shakespeare (val)':28s} {'perplexity':>10s} {'quant. time':>12s}")
for label, (ppl, sec) in gpt_results.items():
    print(f"{label:28s} {ppl:10.3f} {sec:10.2f} s")
ppl = {k: v[0] for k, v in gpt_results.items()}
assert ppl["fp32"] < ppl["GPTQ 4-bit g32 act-order"] < ppl["RTN 4-bit g32"]
assert ppl["GPTQ 4-bit"] < ppl["RTN 4-bit"] and ppl["GPTQ 3-bit"] < ppl["RTN 3-bit"]
assert ppl["GPTQ 3-bit g32 act-order"] < ppl["RTN 3-bit g32"]
for key, name in [("fp32", "fp32"), ("RTN 4-bit", "rtn4"), ("GPTQ 4-bit", "gptq4"), ("RTN 3-bit", "rtn3"),
                  ("GPTQ 3-bit", "gptq3"), ("GPTQ 3-bit g32 act-order", "gptq3g")]:
    glue(f"ch05_ppl_{name}", f"{ppl[key]:.3f}", display=False)

# %% [markdown]
# Per channel at 4 bits, RTN raises the validation perplexity (here on the first 20,000 validation characters) from {glue:text}`ch05_ppl_fp32` to
# {glue:text}`ch05_ppl_rtn4`; GPTQ holds it at {glue:text}`ch05_ppl_gptq4`. At 3 bits the gap widens (RTN
# {glue:text}`ch05_ppl_rtn3`, GPTQ {glue:text}`ch05_ppl_gptq3`), and groups with act-order bring 3-bit GPTQ to
# {glue:text}`ch05_ppl_gptq3g`. The quantization times are seconds for this small model; section 10 shows how they
# scale.
#
# ### A pretrained model: the MiniLM sentence encoder
#
# `all-MiniLM-L6-v2` is a 22.7 M-parameter BERT encoder trained for sentence embeddings, shipped as a wheel on the
# package index and loaded offline by `minillm.pretrained`. Its use is retrieval: given the first line of a Shakespeare
# speech, find the nearest speech among the candidates (128 with the tiny profile) by cosine similarity of
# embeddings. We measure how often the quantized encoder retrieves **the same speech as the fp32 encoder** (top-1
# agreement) and how close its embeddings stay to the fp32 ones (mean cosine). Calibration uses 128 other speeches
# from the training split.

# %% tags=["nbval-ignore-output"]
from minillm.pretrained import embed, load_minilm_encoder

encoder, enc_tok = load_minilm_encoder(ctx.device)
speeches = [s.split("\n") for s in text.split("\n\n")]
speeches = [s for s in speeches if len(s) >= 4]  # speaker line + at least 3 lines of speech
n_pairs = ctx.profile.pick(128, 512)
val_speeches, train_speeches = speeches[-n_pairs:], speeches[:-n_pairs]
queries = [s[1] for s in val_speeches]
docs = [" ".join(s[2:]) for s in val_speeches]
calib_texts = [" ".join(s[1:]) for s in train_speeches[::max(1, len(train_speeches) // 128)][:128]]
calib_batches = [enc_tok(calib_texts[i:i + 32], padding=True, truncation=True, max_length=48, return_tensors="pt").to(ctx.device)
                 for i in range(0, 128, 32)]


def nearest_docs(enc):
    q, d = embed(enc, enc_tok, queries, max_length=32), embed(enc, enc_tok, docs, max_length=48)
    return (q @ d.T).argmax(1), d  # index of each query's nearest speech, and the speech embeddings


top_fp32, d_fp32 = nearest_docs(encoder)
minilm_results = {"fp32": (1.0, 1.0, 0.0)}
for cfg in [QuantConfig("rtn", 4), QuantConfig("gptq", 4, actorder=True), QuantConfig("rtn", 3),
            QuantConfig("gptq", 3, actorder=True), QuantConfig("rtn", 3, 128), QuantConfig("gptq", 3, 128, actorder=True)]:
    qenc = copy.deepcopy(encoder)
    report = quantize_model(qenc, qenc.encoder.layer, calib_batches, cfg, forward=lambda m, b: m(**b), progress=False)
    top_q, d_q = nearest_docs(qenc)
    minilm_results[cfg.label()] = ((top_q == top_fp32).float().mean().item(), (d_q * d_fp32).sum(1).mean().item(),
                                   report.seconds)
print(f"{'MiniLM, speech retrieval':28s} {'top-1 = fp32':>12s} {'cos to fp32':>12s} {'quant. time':>12s}")
for label, (agree, cos_, sec) in minilm_results.items():
    print(f"{label:28s} {agree:12.3f} {cos_:12.4f} {sec:10.2f} s")
m = minilm_results
for bits_ in (4, 3):
    assert m[f"GPTQ {bits_}-bit act-order"][1] > m[f"RTN {bits_}-bit"][1]  # embeddings closer to fp32
assert m["GPTQ 3-bit act-order"][0] > m["RTN 3-bit"][0] and m["GPTQ 3-bit g128 act-order"][1] > m["RTN 3-bit g128"][1]
glue("ch05_minilm_rtn3", f"{m['RTN 3-bit'][0]:.0%}", display=False)
glue("ch05_minilm_gptq3", f"{m['GPTQ 3-bit act-order'][0]:.0%}", display=False)
glue("ch05_minilm_rtn3_cos", f"{m['RTN 3-bit'][1]:.3f}", display=False)
glue("ch05_minilm_gptq3_cos", f"{m['GPTQ 3-bit act-order'][1]:.3f}", display=False)

# %% [markdown]
# At 3 bits per channel, RTN's encoder retrieves the fp32 encoder's answer for {glue:text}`ch05_minilm_rtn3` of the
# queries (embedding cosine {glue:text}`ch05_minilm_rtn3_cos`), GPTQ with act-order for
# {glue:text}`ch05_minilm_gptq3` (cosine {glue:text}`ch05_minilm_gptq3_cos`).
#
# ## 9. Packing into int32, and a Triton kernel
#
# A quantized layer is stored as integer codes, not as the floats `Q`. The layout common GPTQ kernels read, for
# $y = x \hat W$ with $\hat W$ of shape $K \times N$ (in × out) and $p = 32/b$ codes per word:
#
# * `qweight` int32 $(K/p, N)$ — row $k$'s code in word $\lfloor k/p \rfloor$ at bit $(k \bmod p)\, b$ (for 4 bits:
#   nibble $k \bmod 8$);
# * `scales` $(G, N)$, `qzeros` int32 $(G, N/p)$ packed the same way along $N$, and `g_idx` $(K,)$.

# %%
from minillm.quant.packing import pack_weight

label = "GPTQ 4-bit g32 act-order"
qmodel, report = quantized[label]
layer_q = qmodel.blocks[1].mlp.c_proj
packed = pack_weight(layer_q.weight.data, report.grids["1.mlp.c_proj"])
print({k: (tuple(getattr(packed, k).shape), str(getattr(packed, k).dtype)) for k in ("qweight", "scales", "qzeros", "g_idx")})
print(f"{packed.nbytes():,} bytes packed (fp32 scales) vs {layer_q.weight.numel() * 2:,} bytes in fp16")
assert torch.equal(packed.dequantize(), layer_q.weight.data.T)  # lossless: the codes are the quantized weight

# %% [markdown]
# The kernel (`minillm/quant/triton_matmul.py`) gives each program a tile of $y$; walking over $K$ it loads packed
# words, shifts and masks out the codes, gathers each row's scale and zero point through `g_idx` (so act-order costs
# nothing extra), and accumulates $x \hat W$ in float32. At $M = 1$ it uses a multiply–reduce, for larger $M$
# `tl.dot`. On this machine it runs in Triton's interpreter, so here we check correctness; speed needs a GPU
# (section 10).

# %% tags=["nbval-ignore-output"]
from minillm.quant import triton_matmul

if triton_matmul.can_run(ctx.device):
    for M in (1, 16):
        x = torch.randn(M, packed.in_features, device=ctx.device)
        y_kernel = triton_matmul.quant_matmul(x, packed)
        y_ref = x @ packed.dequantize()  # dequantize, then matmul
        rel_k = ((y_kernel - y_ref).abs().max() / y_ref.abs().max()).item()
        print(f"M={M:2d}: Triton kernel vs dequantize-then-matmul, max relative difference {rel_k:.1e}")
        assert rel_k < (1e-5 if ctx.device.type == "cpu" else 1e-2)  # fp32 tl.dot is TF32 on a GPU
else:
    print("Triton is not installed: `pip install triton==3.7.1` (Linux) to run the kernel")

# %% [markdown]
# Finally the whole quantized GPT runs on packed weights: every linear layer of the blocks becomes a
# `QuantLinear` (packed buffers, the Triton kernel where it can run, the pure-torch dequantize-and-matmul
# otherwise), and the loss is the one of the fake-quantized model:

# %% tags=["nbval-ignore-output"]
from minillm.quant.linear import to_quant_linear

packed_model = copy.deepcopy(qmodel)
for name, lin in linear_layers(packed_model.blocks).items():
    parent = packed_model.blocks.get_submodule(name.rsplit(".", 1)[0])
    setattr(parent, name.rsplit(".", 1)[1], to_quant_linear(lin, report.grids[name], backend="torch"))
xb, yb = get_batch(splits.val, gpt_cfg.block_size, 8, torch.Generator().manual_seed(1), ctx.device)
with torch.no_grad():
    loss_fake, loss_packed = qmodel(xb, yb)[1].item(), packed_model(xb, yb)[1].item()
    first = packed_model.blocks[0].mlp.c_fc
    first.backend = "triton" if triton_matmul.can_run(ctx.device) else "torch"
    loss_kernel = packed_model(xb, yb)[1].item()  # one block's MLP input layer on the Triton kernel
print(f"loss: fake-quantized {loss_fake:.5f}, packed (torch) {loss_packed:.5f}, with a Triton layer {loss_kernel:.5f}")
assert abs(loss_fake - loss_packed) < 1e-4 and abs(loss_fake - loss_kernel) < 1e-3

# %% [markdown]
# ## 10. Measure: OBQ vs GPTQ time, and the GPU kernel
#
# `benchmarks/ch05_gptq_cpu.py` times OBQ, the straightforward one-order algorithm (step 1) and GPTQ on square layers
# of growing size, and runs the chapter's bar: GPTQ of a $4096 \times 4096$ layer against the straightforward
# algorithm in one run.

# %% tags=["nbval-ignore-output"]
from minillm.core.bench import read_results, results_path

bench = read_results(results_path("ch05_gptq_cpu", ctx.profile.name, "cpu"), "python benchmarks/ch05_gptq_cpu.py")
sizes = [r["size"] for r in bench["curve"]]
fig, ax = plt.subplots(figsize=(6.5, 4))
for key, label in [("obq_seconds", "OBQ (greedy)"), ("reference_seconds", "one order, explicit downdates"),
                   ("gptq_seconds", "GPTQ (blocks + Cholesky)")]:
    ax.plot(sizes, [r[key] for r in bench["curve"]], "o-", label=label)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("layer size d (d x d weight)")
ax.set_ylabel("seconds to quantize (4-bit)")
ax.set_title(f"Quantization time vs layer size ({bench['machine']['device_name']}, {bench['threads']} threads)")
ax.legend()
plt.tight_layout()
plt.show()
b = bench["bar"]
le = b["layer_error"]
print(f"{b['size']}x{b['size']}: GPTQ {b['gptq_seconds']:.1f} s, straightforward {b['reference_seconds']:.1f} s, "
      f"ratio {b['ratio_gptq_over_reference']:.2f} (bar <= {b['required_ratio_at_most']})")
print(f"weights differ by {b['relative_difference']:.1e} (relative); layer error GPTQ {le['gptq']:.6g}, "
      f"straightforward {le['reference']:.6g}, RTN {le['rtn']:.6g}")
assert abs(le["gptq"] - le["reference"]) / le["reference"] < 1e-3 and le["gptq"] < 0.5 * le["rtn"]
glue("ch05_bar_wdiff", f"{b['relative_difference']:.1e}", display=False)
glue("ch05_bar_size", str(b["size"]), display=False)
glue("ch05_bar_gptq_s", f"{b['gptq_seconds']:.1f}", display=False)
glue("ch05_bar_ref_s", f"{b['reference_seconds']:.1f}", display=False)
glue("ch05_obq_largest", f"{bench['curve'][-1]['obq_seconds'] / bench['curve'][-1]['gptq_seconds']:.0f}", display=False)

# %% [markdown]
# OBQ's cost grows like $d^4$ and is already {glue:text}`ch05_obq_largest`× GPTQ's at the largest size measured.
# On the {glue:text}`ch05_bar_size`² layer GPTQ took {glue:text}`ch05_bar_gptq_s` s against
# {glue:text}`ch05_bar_ref_s` s for the straightforward algorithm (measured on the machine named in the plot title).
# At this size the two results are no longer bit-identical: the weights differ by {glue:text}`ch05_bar_wdiff`
# (relative) because $K$ explicit float32 downdates of $H^{-1}$ accumulate rounding error and flip a few
# roundings, while the layer errors agree to better than 0.1 % — the drift the Cholesky reformulation avoids.
#
# On a GPU, `benchmarks/ch05_quant_matmul_gpu.py` times the Triton kernel against torch's fp16 matmul at decode
# ($M = 1$) and $M = 16$ for $4096 \times 4096$, $4096 \times 11008$ and $11008 \times 4096$ weights, and reports the
# achieved bandwidth against the device's copy bandwidth:

# %% tags=["nbval-ignore-output"]
gpu_path = results_path("ch05_quant_matmul_gpu", ctx.profile.name, "cuda")
if gpu_path.exists():
    gpu = read_results(gpu_path, "python benchmarks/ch05_quant_matmul_gpu.py")
    print(f"{gpu['machine']['device_name']}: copy bandwidth {gpu['peak_copy_bandwidth'] / 1e9:.0f} GB/s")
    for r in gpu["rows"]:
        print(f"K={r['K']:>5} N={r['N']:>5} M={r['M']:>2}  fp16 {r['fp16']['seconds'] * 1e6:7.1f} us "
              f"({r['fp16']['fraction_of_peak']:.0%} of peak)  int4 {r['int4']['seconds'] * 1e6:7.1f} us "
              f"({r['int4']['fraction_of_peak']:.0%}, x{r['int4']['speedup_vs_fp16']:.2f})  "
              f"int2 x{r['int2']['speedup_vs_fp16']:.2f}")
else:
    print(f"no GPU results yet ({gpu_path.name}); on a machine with a CUDA GPU run:\n"
          "  python benchmarks/ch05_quant_matmul_gpu.py")

# %% [markdown]
# ## Exercises
#
# The {doc}`exercises <../exercises/ch05_gptq>` ask you to write the symmetric grouped quantizer, the Hessian's
# running mean, act-order as a permutation around plain GPTQ, and the 4-bit packing, each checked against the
# package.
