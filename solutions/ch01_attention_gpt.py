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
# # Chapter 1 exercises: attention, sampling, the KV cache and rotary positions
#
# Fill in each code cell where it says `YOUR CODE HERE`, then run the check cell below it: the checks compare your
# code with `minillm` and with PyTorch. The chapter is `book/ch01_attention_gpt.ipynb`; worked answers are in
# `solutions/ch01_attention_gpt.ipynb`.

# %% tags=["nbval-ignore-output"]
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.core.notebook import chapter_setup

ctx = chapter_setup("Chapter 1 exercises", minutes_tiny=0.2, minutes_full=0.2)


# %% [markdown]
# ## Exercise 1: the causal mask for a KV cache
#
# When decoding with a cache, the $T_q$ queries are the *newest* positions of a sequence whose $T_k$ keys are all in
# the cache. Write `bottom_right_causal_mask(t_query, t_key)` returning a boolean tensor of shape `(t_query, t_key)`
# that is `True` where query $i$ may attend to key $j$, i.e. where $j \le T_k - T_q + i$.
# *Hint:* `torch.tril` takes a `diagonal` argument.

# %%
def bottom_right_causal_mask(t_query: int, t_key: int) -> torch.Tensor:
    # BEGIN SOLUTION
    return torch.ones(t_query, t_key, dtype=torch.bool).tril(diagonal=t_key - t_query)
    # END SOLUTION


# %%
from minillm.gpt.attention import causal_mask

for t_q, t_k in [(1, 1), (4, 4), (1, 7), (3, 10)]:
    mask = bottom_right_causal_mask(t_q, t_k)
    assert mask.shape == (t_q, t_k) and mask.dtype == torch.bool
    assert torch.equal(mask, causal_mask(t_q, t_k)), f"wrong mask for T_q={t_q}, T_k={t_k}"
assert torch.equal(bottom_right_causal_mask(5, 5), torch.ones(5, 5).tril().bool())
# The last 3 rows of full causal attention equal attending with the 3 newest queries and your mask.
q, k, v = torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
tail = F.scaled_dot_product_attention(q[:, :, -3:], k, v, attn_mask=bottom_right_causal_mask(3, 10))
torch.testing.assert_close(tail, full[:, :, -3:])
print("Exercise 1: correct")


# %% [markdown]
# ## Exercise 2: a softmax that does not overflow
#
# `exp(1000)` is infinite in float32, so a softmax written as `exp(s) / exp(s).sum()` returns `nan` for large scores.
# Because softmax is unchanged by subtracting a constant from every score, subtract each row's maximum first.
# Write `stable_attention(q, k, v, mask)` — scaled dot-product attention with `mask` (True = may attend) — using
# `torch.exp` and `sum` yourself (no `F.softmax`), stable for any finite scores.

# %%
def stable_attention(q, k, v, mask):
    # q: (..., T_q, d), k and v: (..., T_k, d), mask: (T_q, T_k) bool
    # BEGIN SOLUTION
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~mask, float("-inf"))
    scores = scores - scores.amax(dim=-1, keepdim=True)      # the largest score in each row becomes 0
    weights = torch.exp(scores)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights @ v
    # END SOLUTION


# %%
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(2, 3, 12, 16, generator=g) for _ in range(3))
mask = torch.ones(12, 12).tril().bool()
torch.testing.assert_close(stable_attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, is_causal=True),
                           atol=1e-5, rtol=1e-5)
big = stable_attention(q * 1000, k * 1000, v, mask)        # scores around 1e5: exp would overflow
assert torch.isfinite(big).all(), "large scores produced inf/nan: subtract the row maximum before exp"
torch.testing.assert_close(big, F.scaled_dot_product_attention(q * 1000, k * 1000, v, is_causal=True), atol=1e-4, rtol=1e-4)
print("Exercise 2: correct")


# %% [markdown]
# ## Exercise 3: nucleus (top-$p$) sampling
#
# Top-$k$ keeps a fixed number of tokens. Nucleus sampling {cite}`holtzman2020curious` keeps the *smallest* set of most
# likely tokens whose probabilities add up to at least $p$ — few tokens when the model is sure, many when it is not.
# Write `top_p_filter(logits, p)` for logits of shape `(B, V)`, returning logits with every token outside the nucleus
# set to `-inf`. The most likely token is always kept.

# %%
def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    # BEGIN SOLUTION
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # drop a token if the tokens ranked above it already reach p
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
    # END SOLUTION


# %%
probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
logits = probs.log()
kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].tolist()
assert kept(0.1) == [False, True, False, False], "only the top token is needed to reach p=0.1"
assert kept(0.7) == [False, True, False, True], "0.5 alone does not reach 0.7: the token that crosses p stays"
assert kept(0.79) == [False, True, False, True]
assert kept(0.81) == [False, True, True, True], "0.5 + 0.3 falls short of 0.81: the third token is needed"
assert kept(0.9) == [False, True, True, True]
assert kept(1.0) == [True, True, True, True]
batch = torch.randn(5, 65, generator=torch.Generator().manual_seed(1))
out = top_p_filter(batch, 0.9)
assert out.shape == batch.shape
assert torch.equal(out.argmax(-1), batch.argmax(-1)), "the most likely token must always be kept"
kept_mass = (batch.softmax(-1) * torch.isfinite(out)).sum(-1)
assert (kept_mass >= 0.9 - 1e-6).all()
print("Exercise 3: correct")


# %% [markdown]
# ## Exercise 4: how much memory does a KV cache need?
#
# Write `kv_cache_bytes(n_layer, batch_size, n_kv_head, seq_len, head_size, bytes_per_element)` **from the formula**
# (without allocating anything): every layer stores one key and one value vector of size `head_size` per key/value
# head, per position, per sequence. `bytes_per_element` may be fractional: a cache quantized to 4 bits stores half a
# byte per element. Then answer two questions in the variables below:
#
# * `full_preset_mib`: how many MiB (2²⁰ bytes) does the fixed cache of the chapter's full preset
#   (`gpt-shakespeare`, `block_size` positions) take for 64 sequences in float32?
# * `llama2_7b_gib`: how many GiB (2³⁰ bytes) does Llama-2-7B's cache take for one sequence of its full 4,096-token
#   context in float16? (32 layers, 32 key/value heads of size 128.)

# %%
def kv_cache_bytes(n_layer, batch_size, n_kv_head, seq_len, head_size, bytes_per_element=4):
    # BEGIN SOLUTION
    return 2 * n_layer * batch_size * n_kv_head * seq_len * head_size * bytes_per_element
    # END SOLUTION


from minillm.gpt import gpt_config

# BEGIN SOLUTION
cfg = gpt_config("gpt-shakespeare", vocab_size=65)
full_preset_mib = kv_cache_bytes(cfg.n_layer, 64, cfg.n_head, cfg.block_size, cfg.head_size) / 2**20
llama2_7b_gib = kv_cache_bytes(32, 1, 32, 4096, 128, bytes_per_element=2) / 2**30
# END SOLUTION


# %%
from unittest import mock

from minillm.gpt.kv_cache import KVCache

for n_layer, b, nh, t, hs in [(1, 1, 1, 1, 1), (4, 2, 4, 64, 32), (6, 3, 6, 256, 64)]:
    assert kv_cache_bytes(n_layer, b, nh, t, hs) == KVCache(n_layer, b, nh, t, hs).nbytes()
assert kv_cache_bytes(2, 1, 2, 8, 4, bytes_per_element=2) == KVCache(2, 1, 2, 8, 4, dtype=torch.float16).nbytes()
# a 4-bit cache: half a byte per element, a quarter of float16's bytes
assert kv_cache_bytes(2, 3, 2, 8, 4, bytes_per_element=0.5) == KVCache(2, 3, 2, 8, 4, dtype=torch.float16).nbytes() / 4
# 80 layers, 64 sequences of 32k tokens: about 1.4 TB in float32 -- it must come from the formula, not an allocation
with mock.patch("torch.zeros", side_effect=AssertionError("compute the bytes from the formula; do not build a cache")):
    assert kv_cache_bytes(80, 64, 8, 32_768, 128, bytes_per_element=2) == 2 * 80 * 64 * 8 * 32_768 * 128 * 2
preset = gpt_config("gpt-shakespeare", vocab_size=65)
expected_mib = KVCache(preset.n_layer, 64, preset.n_head, preset.block_size, preset.head_size).nbytes() / 2**20
assert abs(full_preset_mib - expected_mib) < 0.5, f"full_preset_mib = {full_preset_mib:.1f}: count MiB (2**20 bytes)"
# the Llama cache grows linearly in the context, so 1/64 of it (64 tokens) can be built and scaled
expected_gib = KVCache(32, 1, 32, 4096 // 64, 128, dtype=torch.float16).nbytes() * 64 / 2**30
assert abs(llama2_7b_gib - expected_gib) < 0.01, f"llama2_7b_gib = {llama2_7b_gib:.3f}: count GiB (2**30 bytes) of fp16"
print(f"your answers: {full_preset_mib:.0f} MiB for the full preset's batch, {llama2_7b_gib:.1f} GiB for one Llama-2-7B "
      "context")
print("Exercise 4: correct")


# %% [markdown]
# ## Exercise 5: multi-query attention
#
# In **multi-query attention** (MQA) all query heads share a single key head and a single value head, which shrinks
# the KV cache by a factor of `n_head`. Write `MultiQueryAttention`: queries `C → C` (then `n_head` heads of size
# `C / n_head`), one key and one value projection `C → C / n_head`, causal attention, output projection `C → C`,
# no biases.

# %%
class MultiQueryAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head, self.head_size = n_head, n_embd // n_head
        self.q_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.k_proj = nn.Linear(n_embd, self.head_size, bias=False)
        self.v_proj = nn.Linear(n_embd, self.head_size, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        # BEGIN SOLUTION
        q = self.q_proj(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)   # (B, nh, T, hs)
        k = self.k_proj(x).unsqueeze(1)                                             # (B, 1, T, hs): shared
        v = self.v_proj(x).unsqueeze(1)                                             # (B, 1, T, hs): shared
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_size)               # broadcast over heads
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).tril().logical_not(), float("-inf"))
        y = scores.softmax(-1) @ v                                                  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        # END SOLUTION


# %%
from minillm.gpt.attention import CausalSelfAttention

torch.manual_seed(0)
C, nh, T = 64, 4, 16
mqa = MultiQueryAttention(C, nh)
x = torch.randn(2, T, C)
y = mqa(x)
assert y.shape == (2, T, C)
# Causal: changing the last token cannot change earlier outputs.
x2 = x.clone(); x2[:, -1] += 1.0
torch.testing.assert_close(mqa(x2)[:, :-1], y[:, :-1])
# MQA is multi-head attention whose K/V heads are all copies of one head.
mha = CausalSelfAttention(C, nh, block_size=T, bias=False, backend="manual")
with torch.no_grad():
    mha.c_attn.weight[:C] = mqa.q_proj.weight
    mha.c_attn.weight[C:2 * C] = mqa.k_proj.weight.repeat(nh, 1)
    mha.c_attn.weight[2 * C:] = mqa.v_proj.weight.repeat(nh, 1)
    mha.c_proj.weight.copy_(mqa.c_proj.weight)
torch.testing.assert_close(y, mha(x), atol=1e-5, rtol=1e-5)
n_mqa, n_mha = sum(p.numel() for p in mqa.parameters()), sum(p.numel() for p in mha.parameters())
print(f"MQA {n_mqa:,} parameters vs MHA {n_mha:,}; KV cache {nh}x smaller")
print("Exercise 5: correct")

# %% [markdown]
# ## Exercise 6: rotary embeddings with complex numbers
#
# Read coordinate $i$ of a head vector together with coordinate $i + d/2$ as one complex number
# $z_i = x_i + \mathrm{i}\, x_{i+d/2}$ ($i = 0 \dots d/2-1$, the layout of `minillm.gpt.rope`). RoPE at position $m$ is
# then one multiplication per pair: $z_i \mapsto z_i\, e^{\mathrm{i} m \theta_i}$ with $\theta_i = b^{-2i/d}$.
# Write `rope_complex(x, positions, base)` for `x` of shape `(..., T, d)` and integer `positions` of shape `(T,)`,
# returning the rotated real tensor of the same shape. *Hint:* `torch.complex`, `torch.polar`, `.real`, `.imag`.

# %%
def rope_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
    d = x.size(-1)
    # BEGIN SOLUTION
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)               # (d/2,)
    angles = positions.to(torch.float64)[:, None] * theta[None, :]                   # (T, d/2)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())           # (..., T, d/2)
    z = z * torch.polar(torch.ones_like(angles), angles)                             # rotate every pair
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)
    # END SOLUTION


# %%
from minillm.gpt.rope import RotaryEmbedding, apply_rope

g = torch.Generator().manual_seed(0)
x = torch.randn(2, 3, 10, 16, generator=g)
positions = torch.arange(7, 17)
ours = rope_complex(x, positions)
assert ours.shape == x.shape and ours.dtype == x.dtype
torch.testing.assert_close(ours, apply_rope(x, *RotaryEmbedding(16)(positions)), atol=1e-5, rtol=1e-5)
torch.testing.assert_close(rope_complex(x, positions, base=50.0), apply_rope(x, *RotaryEmbedding(16, 50.0)(positions)),
                           atol=1e-5, rtol=1e-5)
torch.testing.assert_close(ours.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)   # rotations keep lengths
# a query at m and a key at n score the same as at m + 40 and n + 40: only the offset counts
q, k = x[0, 0, :1], x[0, 1, :1]
score = lambda m, n: (rope_complex(q, torch.tensor([m])) @ rope_complex(k, torch.tensor([n])).T).item()
assert abs(score(9, 2) - score(49, 42)) < 1e-4
print("Exercise 6: correct")
