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
import json
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
# $[-\max|w|, \max|w|]$ — but its $2^b$ codes $s(q - z)$ run from $-2^{b-1}s$ to $(2^{b-1}-1)s$ with
# $s = 2\max|w|/(2^b-1)$, so the positive end stops at $(2^b-2)/(2^b-1)$ of $\max|w|$ (0.93 at 4 bits): the largest
# positive weight is clipped. `minillm.quant.quantizer` implements it; **round-to-nearest (RTN)** is just this rounding:

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
# a smoke run (capped loops) keeps its own file, so it never stands in for a fully trained model
checkpoint = cache_dir() / "ch05" / f"gpt-{ctx.profile.name}{'-smoke' if ctx.profile.smoke else ''}.safetensors"
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
# tiny profile: the first 20k validation characters (a smoke run: 4k)
val_slice = splits.val[:ctx.profile.size(ctx.profile.pick(20_000, len(splits.val)), smoke=4_096)]
fp32_loss = evaluate_loss(model, val_slice, gpt_cfg.block_size, device=ctx.device)
print(f"{model.num_params():,} parameters; validation loss {fp32_loss:.3f} nats/char, perplexity {math.exp(fp32_loss):.3f}")
ctx.profile.assert_full_length(fp32_loss < 1.9, "chapter 1's GPT reaches a validation loss below 1.9 nats/char")

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

# %%
from minillm.quant.hessian import HessianAccumulator, layer_error
from minillm.quant.rtn import rtn_quantize

calib_gen = torch.Generator().manual_seed(0)
calib = [get_batch(splits.train, gpt_cfg.block_size, 16, calib_gen, ctx.device)[0]
         for _ in range(ctx.profile.size(8, smoke=1))]  # 8 x (16, T); a smoke run: 1

layer = model.blocks[0].attn.c_attn  # (3C, C): the query/key/value projection of block 0
acc, handle = HessianAccumulator.attach(layer)
with torch.no_grad():
    for xb in calib:
        model(xb)
handle.remove()
# a smoke run of the full profile keeps the first 96 rows: OBQ below costs O(N K^3)
W, H = layer.weight.data.float()[:ctx.profile.size(layer.weight.shape[0], smoke=96)], acc.H
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
spread = (eig.max() / eig.median()).item()
assert spread > 10, spread
print("output error == tr((W - Q) H (W - Q)^T) to 0.1 %; H's largest eigenvalue is over 10x its median: "
      "far from the identity RTN assumes")
glue("ch05_h_spread", f"{spread:.0f}", display=False)

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


# %%
from minillm.quant.hessian import inverse_hessian, prepare_hessian
from minillm.quant.obq import obq_quantize

bits = 4
Wd, Hd = prepare_hessian(W, H, percdamp=0.01)  # dead columns fixed, 1 % damping
Hinv = inverse_hessian(Hd, 0.01)
scale, zero = find_params(Wd, bits)
rows = [obq_row(Wd[i], Hinv, scale[i], zero[i], bits) for i in range(4)]
Q_obq, _ = obq_quantize(W, H, bits, order="greedy")  # all rows, batched
assert torch.allclose(torch.stack(rows), Q_obq[:4], atol=1e-6)
err_rtn, err_obq = layer_error(W, Q_rtn4, H), layer_error(W, Q_obq, H)
assert err_obq < 0.8 * err_rtn, err_obq / err_rtn
print("obq_row == obq_quantize on 4 rows; OBQ's layer error is below 0.8x RTN's")
glue("ch05_obq_over_rtn", f"{err_obq / err_rtn:.2f}", display=False)

# %% [markdown]
# On this layer OBQ's error is {glue:text}`ch05_obq_over_rtn` of RTN's. OBQ is excellent and slow: every row has its own order, hence its own $H^{-1}$ to downdate, $O(NK^3)$ time in
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

# %%
Q_seq = gptq_sequential(W, H, bits)
Q_obq_seq, _ = obq_quantize(W, H, bits, order="sequential")
rel_obq_gptq = ((Q_obq_seq - Q_seq).norm() / Q_seq.norm()).item()
assert rel_obq_gptq < 1e-5, rel_obq_gptq
print("sequential OBQ == one-order GPTQ (relative difference < 1e-5)")
err_seq = layer_error(W, Q_seq, H)

# %% [markdown]
# ### Step 2: Cholesky instead of downdates
#
# After removing columns $0..i-1$, the only part of $H^{-1}$ the algorithm ever reads is row $i$ from the diagonal
# on. Those rows are, up to a factor $\sqrt{[H^{-1}]_{ii}}$, the rows of the **upper Cholesky factor** $U$ of
# $H^{-1}$ ($H^{-1} = U^\top U$): eliminating variables one by one *is* a Cholesky factorisation. So we compute $U$
# once, with a numerically stable routine, instead of $K$ downdates whose rounding errors pile up (and can make
# $H^{-1}$ indefinite on large layers). Checking the identity on our layer:

# %%
Hinv_down = inverse_hessian(Hd, 0.01)
U = torch.linalg.cholesky(inverse_hessian(Hd, 0.01), upper=True)  # (K, K)
worst = 0.0
for i in range(Hd.shape[0]):
    row = Hinv_down[i, i:] / Hinv_down[i, i].sqrt()
    worst = max(worst, ((row - U[i, i:]).abs().max() / U[i, i:].abs().max()).item())
    Hinv_down[i + 1:, i + 1:] -= torch.outer(Hinv_down[i + 1:, i], Hinv_down[i, i + 1:]) / Hinv_down[i, i]
assert worst < 1e-3, worst
print("every downdated row of H^-1, scaled by 1/sqrt(diagonal), equals the Cholesky row (to 1e-3)")

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


# %%
from minillm.quant.gptq import gptq_quantize

Q_blocked = gptq_blocked(W, H, bits, blocksize=32)
Q_gptq, grid = gptq_quantize(W, H, bits, blocksize=32)  # the package: same algorithm + groups, act-order
for name, Q in [("blocked (notebook)", Q_blocked), ("gptq_quantize (package)", Q_gptq)]:
    rel = ((Q - Q_seq).norm() / Q_seq.norm()).item()
    assert rel < 1e-5, rel
    print(f"{name:24s} == step 1 (relative difference < 1e-5)")
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
# rows than input features, $H$ is singular, and float rounding can leave it slightly indefinite; then 1 % is not
# enough. `gptq_quantize` retries with ten times more damping (at most three times), says so with a
# `DampingRetryWarning` (`quantize_model` records it per layer in `report.retries`), and refuses with a message
# naming the fix when nothing works:

# %%
import warnings

from minillm.quant.gptq import DampingRetryWarning
from minillm.quant.hessian import NotPositiveDefiniteError

few = Xin[:16]  # 16 rows for 128 features: H has rank 16
H_few = 2 / 16 * few.T @ few
H_bad = H_few - 0.05 * torch.diag(H_few).mean() * torch.eye(H_few.shape[0])  # slightly indefinite, as rounding makes it
try:
    gptq_quantize(W, H_bad, bits, percdamp=0.01, retries=0)
    raise AssertionError("an indefinite Hessian must be refused at 1 % damping")
except NotPositiveDefiniteError as err:
    print("retries=0:", type(err).__name__, "- the message says:", str(err).split("Fix: ")[1].split(" (tried")[0])
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    Q_few, _ = gptq_quantize(W, H_bad, bits, percdamp=0.01)  # the default: retry with 10x more damping
print("default:", [str(w.message).split("; ")[1] for w in caught if w.category is DampingRetryWarning])
assert torch.isfinite(Q_few).all() and layer_error(W, Q_few, H) > err_gptq  # solvable, but 16 rows are too few

# %% [markdown]
# ### GPTQ vs RTN on every trained layer
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
ax.axhline(0.8, color="k", ls="--", lw=1, label="0.8 x RTN")
ax.set_xticks(range(len(ratios)), list(ratios), rotation=60, ha="right", fontsize=8)
ax.set_ylabel("GPTQ error / RTN error")
ax.set_title("4-bit per-channel layer error, GPTQ relative to RTN (lower is better)")
ax.legend()
plt.tight_layout()
plt.show()
print(f"demo layer blocks.0.attn.c_attn: GPTQ / RTN = {err_gptq / err_rtn:.3f}; "
      f"median over all layers {sorted(ratios.values())[len(ratios) // 2]:.3f}, worst {max(ratios.values()):.3f}")
assert err_gptq <= 0.8 * err_rtn, "GPTQ's layer error should be at most 0.8 x RTN's on a real trained layer"
assert sorted(ratios.values())[len(ratios) // 2] < 0.8
glue("ch05_bar_ratio", f"{err_gptq / err_rtn:.3f}", display=False)
glue("ch05_worst_ratio", f"{max(ratios.values()):.3f}", display=False)

# %% [markdown]
# On the demo layer GPTQ's error is {glue:text}`ch05_bar_ratio` of RTN's; the worst layer reaches
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
ctx.profile.assert_full_length(abs(ppl["GPTQ 4-bit g32 act-order"] / ppl["fp32"] - 1) < 0.02,
                               "GPTQ 4-bit g32 act-order within 2 % of fp32 on this small model")
ctx.profile.assert_full_length(ppl["GPTQ 4-bit"] < ppl["RTN 4-bit"] and ppl["GPTQ 3-bit"] < ppl["RTN 3-bit"]
                               and ppl["GPTQ 3-bit g32 act-order"] < ppl["RTN 3-bit g32"],
                               "GPTQ below RTN at 4 and 3 bits, per channel and with groups")
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
# A top-1 agreement well below 100 % does not mean the quantized encoder retrieves wrong speeches: it means that for
# that share of queries its nearest speech differs from the fp32 encoder's, often a near-tie among similar speeches.
# For retrieval, the cosine to the fp32 embeddings and the fp32 encoder's own accuracy are what to watch: an index
# built with one encoder and queried with the other would see exactly these disagreements.
#
# ### A real LLM: SmolLM2-135M
#
# On chapter 1's 0.8 M-parameter GPT, RTN is already nearly lossless at 4 bits, so the reason GPTQ exists — RTN
# falling apart at 3–4 bits on real language models — does not show. SmolLM2-135M (Llama architecture, 30 decoder
# layers, 134.5 M parameters, `minillm.pretrained.load_smollm2()`) does show it. `studies/ch05_smollm2.py` quantizes
# all 210 linears of its decoder layers, layer by layer, each layer calibrated on the outputs of the already
# quantized layers before it (`minillm.quant.quantize_decoder`); embeddings and the tied head stay as loaded.
# Calibration: random 256-token windows of eight plays the evaluation corpus does not contain
# (`minillm.quant.CALIB_PLAYS`), cut from one token stream, so no window is padded and every position belongs in the
# Hessians. Evaluation: perplexity on non-overlapping 256-token windows of held-out Shakespeare (the last 10 % of
# chapter 1's corpus). The study takes tens of CPU minutes, too long for this notebook; here we read its result.
#
# **The baseline.** The model file stores its linears as Q4_1 (4-bit, groups of 32 weights, $w = d\,q + m$ with a
# real-valued offset $m$), so "fp" is those weights dequantized to float32. One might expect RTN with 4 bits and
# groups of 32 to give them back exactly. It does not with GPTQ's grid, whose zero point is an integer: the study
# measures what share of weights each grid reproduces.

# %%
from minillm.core.bench import read_results, results_path
from minillm.core.claims import ClaimError, mean_ci
from minillm.core.paths import project_root
from minillm.quant import GAP_TARGETS, gap_claim, study_closures, study_ppl

study_path = results_path("ch05_smollm2", "tiny", "cpu", project_root() / "studies" / "results")
study = read_results(study_path, "python studies/ch05_smollm2.py")
st = study["settings"]
print(f"{st['model']}; calibration {st['calib_windows']} x {st['ctx']} tokens per seed, "
      f"evaluation {st['eval_windows']} x {st['ctx']} tokens; {len(study['runs'])} runs in the file")
for layer, r in study["q4_1"].items():
    print(f"  {layer:22s} 4-bit g32, integer zero point: {r['integer_zero_exact']:6.1%} of weights exact "
          f"(mean error {r['integer_zero_mean_error_steps']:.2f} steps);  min + s*q grid: {r['real_offset_exact']:6.1%}")
q41 = list(study["q4_1"].values())
assert all(r["real_offset_exact"] > 0.99 and r["integer_zero_exact"] < 0.05 for r in q41)
glue("ch05_q41_int", f"{max(r['integer_zero_exact'] for r in q41):.1%}", display=False)

# %% [markdown]
# At most {glue:text}`ch05_q41_int` of the weights come back exactly with the integer zero point; the grid
# $w = \min + s\,q$, $s = (\max - \min)/15$ gives back every one of them. So RTN 4-bit g32 does not reproduce the
# file, and the chapter compares per-channel grids (one scale per output row, where RTN hurts most) and groups of 64
# (576 input features = 9 × 64).
#
# The table puts the GPTQ paper's OPT-125M results beside ours — **the paper's numbers, not ours**: WikiText-2
# perplexity, per channel {cite}`frantar2023gptq`. Different model, data and tokenizer: compare the pattern, not
# the values.

# %%
PAPER_OPT125M = {"fp": 27.65, "RTN 4-bit": 37.28, "GPTQ 4-bit": 31.12, "GPTQ 3-bit": 53.85}  # the paper's numbers


def row(label, ppls, paper_key=None):
    paper = PAPER_OPT125M.get(paper_key or label, None)
    cell = f"{'-':>8s}" if not ppls else (f"{ppls[0]:8.2f}" if len(ppls) == 1 else
                                 f"{sum(ppls) / len(ppls):8.2f} ({len(ppls)} seeds: {min(ppls):.1f}-{max(ppls):.1f})")
    print(f"{label:34s} {cell:32s} {'' if paper is None else f'{paper:7.2f}'}")


print(f"{'SmolLM2-135M, held-out Shakespeare':34s} {'perplexity (ours)':32s} OPT-125M, WikiText-2 (paper)")
fp_ppl = study_ppl(study, "fp")
row("fp (Q4_1 file, dequantized)", fp_ppl, "fp")
for bits_ in (4, 3):
    row(f"RTN {bits_}-bit", study_ppl(study, "rtn", bits_))
    row(f"GPTQ {bits_}-bit act-order", study_ppl(study, "gptq", bits_, -1, True), f"GPTQ {bits_}-bit")
    row(f"GPTQ {bits_}-bit no act-order", study_ppl(study, "gptq", bits_, -1, False), "-")
for bits_ in (4, 3):
    row(f"RTN {bits_}-bit g64", study_ppl(study, "rtn", bits_, 64))
    row(f"GPTQ {bits_}-bit g64 act-order", study_ppl(study, "gptq", bits_, 64, True))
row("RTN 4-bit g32 (the file's groups)", study_ppl(study, "rtn", 4, 32))
rtn4, rtn3 = study_ppl(study, "rtn", 4), study_ppl(study, "rtn", 3)
assert fp_ppl and rtn4 and rtn3 and fp_ppl[0] < rtn4[0] < rtn3[0]
glue("ch05_sm_fp", f"{fp_ppl[0]:.1f}", display=False)
glue("ch05_sm_rtn4", f"{rtn4[0]:.1f}", display=False)
glue("ch05_sm_rtn3", f"{rtn3[0]:.0f}", display=False)

# %% [markdown]
# Per channel, RTN takes the perplexity from {glue:text}`ch05_sm_fp` to {glue:text}`ch05_sm_rtn4` at 4 bits and
# {glue:text}`ch05_sm_rtn3` at 3 bits: on a real LLM round-to-nearest falls apart. The measure of GPTQ is the share
# of that gap it closes, $(\mathrm{ppl}_\mathrm{RTN} - \mathrm{ppl}_\mathrm{GPTQ}) /
# (\mathrm{ppl}_\mathrm{RTN} - \mathrm{ppl}_\mathrm{fp})$, with a 95 % interval over calibration seeds, judged
# against 60 % at 4 bits and 75 % at 3 bits:

# %%
for bits_ in (4, 3):
    closed = study_closures(study, bits_)
    assert all(c > 0 for c in closed), closed  # every seed: GPTQ better than RTN
    if len(closed) >= 2:
        ci = mean_ci(closed)
        try:
            gap_claim(closed, bits_)
            what = f"lies above {GAP_TARGETS[bits_]:.0%}"
        except ClaimError:
            what = f"does not lie above {GAP_TARGETS[bits_]:.0%}: this run does not support that target"
        text_ = f"{ci.format('.2f')} (95 % interval, {len(closed)} seeds); the interval {what}"
    elif closed:
        text_ = f"{closed[0]:.2f} (one calibration seed so far: no interval)"
    else:
        text_ = "not measured in this run of the study"
    print(f"{bits_}-bit per channel, GPTQ act-order closes {text_}")
    glue(f"ch05_sm_gap{bits_}", text_, display=False)

# %% [markdown]
# At 4 bits GPTQ closes {glue:text}`ch05_sm_gap4` of RTN's gap; at 3 bits {glue:text}`ch05_sm_gap3`.

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(7, 3.8))
bars = [(label, ppls) for label, ppls in [
    ("fp", fp_ppl), ("RTN 4", rtn4), ("GPTQ 4", study_ppl(study, "gptq", 4, -1, True)), ("RTN 3", rtn3),
    ("GPTQ 3", study_ppl(study, "gptq", 3, -1, True)), ("RTN 3 g64", study_ppl(study, "rtn", 3, 64)),
    ("GPTQ 3 g64", study_ppl(study, "gptq", 3, 64, True))] if ppls]
for i, (label, ppls) in enumerate(bars):
    ax.bar(i, sum(ppls) / len(ppls), color="C0" if "GPTQ" in label else ("C1" if "RTN" in label else "C2"))
    ax.plot([i] * len(ppls), ppls, "k.", ms=6)
ax.set_xticks(range(len(bars)), [b[0] for b in bars])
ax.set_yscale("log")
ax.set_ylabel("perplexity, held-out Shakespeare (log)")
ax.set_title("SmolLM2-135M, per channel unless g64; dots are calibration seeds")
plt.tight_layout()
plt.show()
assert len(bars) >= 3 and all(p > 1 for _, ppls in bars for p in ppls)

# %% [markdown]
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
# words, shifts and masks out the codes, and accumulates $x \hat W$ in float32. It reads a copy regrouped once at
# load time (`packed.for_kernel()`): rows sorted by group, so a tile needs one scale and zero vector and only $x$ is
# gathered through `g_idx`; at $M = 1$ it turns codes into floats with a bit trick and scales once per group, for
# larger $M$ it uses `tl.dot`. 3-bit layers pack 32 rows into 3 words. What act-order's gather of $x$ costs on a GPU
# is measured by `benchmarks/ch05_quant_matmul_gpu.py`; no GPU run exists yet, so this chapter makes no claim about
# it. On this machine it runs in Triton's interpreter, so here we check correctness; speed needs a GPU
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

# %%
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
assert abs(loss_fake - loss_packed) < 1e-4 and abs(loss_fake - loss_kernel) < 1e-3, (loss_fake, loss_packed, loss_kernel)
print("loss of the packed model == fake-quantized model's (to 1e-4; to 1e-3 with a kernel layer)")

# %% [markdown]
# ### Save, reload, generate
#
# `pack_model` turns every quantized linear into a `QuantLinear`; `save_quantized` writes the tensors as safetensors
# (for each layer `qweight`, `scales`, `qzeros`, `g_idx`, `bias` — the names common GPTQ tools read) and a JSON
# beside them with `quantize_config` (`bits`, `group_size`, `desc_act`, `sym`) and each layer's bits.
# `load_quantized` rebuilds the packed layers inside a fresh GPT and loads every tensor strictly. The reloaded model
# must generate exactly the tokens the quantized model generates:

# %%
from minillm.gpt import generate
from minillm.quant import load_quantized, pack_model, save_quantized

save_gpt = copy.deepcopy(qmodel)
names = pack_model(save_gpt, save_gpt.blocks, report, backend="torch")
saved = save_quantized(save_gpt, cache_dir() / "ch05" / f"gpt-{ctx.profile.name}-gptq4-g32.safetensors", report)
reloaded = load_quantized(GPT(gpt_cfg).to(ctx.device).eval(), saved, backend="torch")
prompt = tokenizer.encode("ROMEO:\n")[None].to(ctx.device)  # (1, T)
with torch.no_grad():
    want = generate(qmodel, prompt, 60, top_k=1)
    got = generate(reloaded, prompt, 60, top_k=1)
print(f"{len(names)} packed layers, files: {saved.name} + {saved.with_suffix('.json').name}")
print("quantize_config:", json.loads(saved.with_suffix(".json").read_text())["quantize_config"])
print("reloaded model generates the same 60 tokens:", torch.equal(want, got))
assert torch.equal(want, got)

# %% [markdown]
# ## 10. Measure: OBQ vs GPTQ time, and the GPU kernel
#
# `benchmarks/ch05_gptq_cpu.py` times OBQ, the straightforward one-order algorithm (step 1) and GPTQ on square layers
# of growing size, and GPTQ of a $4096 \times 4096$ layer against the straightforward algorithm in one run. That
# second comparison is against a strawman: no one quantizes with explicit downdates. It shows what the Cholesky and
# block reformulation buy, not that this implementation is fast; the comparison that would say so (against a
# well-tuned implementation of the same loop, and against the FLOP count's floor on this CPU) is not made in this
# chapter.

# %% tags=["nbval-ignore-output"]
bench_path = results_path("ch05_gptq_cpu", ctx.profile.name, "cpu")
if not bench_path.exists():  # this profile's CPU benchmark has not been run here: show the tiny profile's
    bench_path = results_path("ch05_gptq_cpu", "tiny", "cpu")
bench = read_results(bench_path, "python benchmarks/ch05_gptq_cpu.py")
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
      f"ratio {b['ratio_gptq_over_reference']:.2f}")
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
    failed = [(r["K"], r["N"], r["M"], k) for r in gpu["rows"] for k in ("int4", "int2") if "error" in r[k]]
    assert not failed, f"no kernel configuration ran equal to dequantize-then-matmul for {failed}: see the JSON"
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
