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
# # Chapter 2 exercises: balancing, capacity, z-loss and expert-choice routing
#
# Fill in each code cell where it says `YOUR CODE HERE`, then run the check cell below it: the checks compare your
# code with `minillm.moe` and `minillm.moe.dispatch`. The chapter is `book/ch02_moe.ipynb`; worked answers are in
# `solutions/ch02_moe.ipynb`.

# %% tags=["nbval-ignore-output"]
import torch
import torch.nn.functional as F

from minillm.core.notebook import chapter_setup

ctx = chapter_setup("Chapter 2 exercises", minutes_tiny=0.3, minutes_full=0.3)


# %% [markdown]
# ## Exercise 1: the Switch load-balancing loss
#
# Given router probabilities `probs` of shape `(N, E)` (a softmax over all experts) and the chosen experts
# `expert_idx` of shape `(N, k)`, return $\mathcal{L}_{bal} = E \sum_i f_i P_i$, where $f_i$ is the share of the
# $N k$ assignments that went to expert $i$ and $P_i$ the mean of `probs[:, i]`. The counts $f$ carry no gradient;
# $P$ must. *Hint:* `torch.bincount(..., minlength=E)`.

# %%
def switch_balance_loss(probs: torch.Tensor, expert_idx: torch.Tensor) -> torch.Tensor:
    # BEGIN SOLUTION
    n_experts = probs.size(-1)
    counts = torch.bincount(expert_idx.reshape(-1), minlength=n_experts).to(probs.dtype)
    f = counts / expert_idx.numel()              # (E,) share of assignments, no gradient
    p = probs.mean(dim=0)                        # (E,) mean router probability, differentiable
    return n_experts * (f * p).sum()
    # END SOLUTION


# %%
from minillm.moe import load_balancing_loss

g = torch.Generator().manual_seed(0)
for n, e, k in [(50, 8, 2), (7, 4, 1), (200, 16, 4)]:
    logits = torch.randn(n, e, generator=g, requires_grad=True)
    idx = logits.detach().topk(k, -1).indices
    ours, ref = switch_balance_loss(logits.softmax(-1), idx), load_balancing_loss(logits.softmax(-1), idx)
    torch.testing.assert_close(ours, ref)
    g_ours, = torch.autograd.grad(ours, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref)
uniform = switch_balance_loss(torch.full((16, 8), 1 / 8), torch.arange(32).remainder(8).view(16, 2))
assert abs(uniform.item() - 1.0) < 1e-6, "perfectly uniform routing gives exactly 1"
collapsed_p = torch.zeros(16, 8)
collapsed_p[:, :2] = 0.5                                            # all probability on experts 0 and 1 ...
collapsed = switch_balance_loss(collapsed_p, torch.tensor([[0, 1]]).repeat(16, 1))  # ... which take every token
assert abs(collapsed.item() - 8 / 2) < 1e-6, "top-2 routing collapsed onto two experts gives E/k = 4, the maximum"
print("Exercise 1: correct")


# %% [markdown]
# ## Exercise 2: expert capacity, first choices first
#
# Each expert has `capacity` slots. Fill them choice by choice — every token's first choice (column 0 of
# `expert_idx`), then every second choice — and, within a choice, in token order. Return a boolean `(N, k)` mask that
# is `True` for the assignments that got a slot. Do it without a Python loop over tokens.
# *Hint:* order the assignments choice-major with `expert_idx.t().reshape(-1)`; a cumulative sum of one-hot rows
# numbers each expert's assignments.

# %%
def capacity_mask(expert_idx: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    # BEGIN SOLUTION
    N, k = expert_idx.shape
    choice_major = expert_idx.t().reshape(-1)                    # (k*N,)
    one_hot = F.one_hot(choice_major, n_experts)                 # (k*N, E)
    position = (one_hot.cumsum(0) * one_hot).sum(-1) - 1         # slot number within the expert
    return (position < capacity).view(k, N).t()
    # END SOLUTION


# %%
from minillm.moe.dispatch import capacity_keep_mask

idx = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 2]])
expected = torch.tensor([[True, True], [True, False], [True, False], [False, True]])
assert torch.equal(capacity_mask(idx, 3, 2), expected), "first choices must be served before second choices"
g = torch.Generator().manual_seed(1)
for n, e, k, cap in [(64, 8, 2, 10), (33, 4, 3, 5), (10, 8, 1, 1)]:
    idx = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(n)])
    mask = capacity_mask(idx, e, cap)
    assert torch.equal(mask, capacity_keep_mask(idx, e, cap))
    kept_per_expert = torch.bincount(idx[mask], minlength=e)
    assert (kept_per_expert <= cap).all()
print("Exercise 2: correct")


# %% [markdown]
# ## Exercise 3: the router z-loss
#
# Write `z_loss(logits)` $= \frac1N\sum_x \big(\log\sum_i e^{h_i(x)}\big)^2$ (use `torch.logsumexp`). Then train a
# router — a linear layer from 16 features to 8 experts — to predict a fixed "best expert" per token with
# cross-entropy, once without and once with `beta * z_loss`, and return the mean absolute logit of each. The check
# expects the z-loss to keep the logits smaller.

# %%
def z_loss(logits: torch.Tensor) -> torch.Tensor:
    # BEGIN SOLUTION
    return torch.logsumexp(logits, dim=-1).square().mean()
    # END SOLUTION


def train_router(beta: float, steps: int = 300, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=g)
    target = (x[:, :8] * 3).argmax(-1)                            # a learnable "best expert" per token
    torch.manual_seed(seed)
    router = torch.nn.Linear(16, 8)
    opt = torch.optim.Adam(router.parameters(), lr=0.05)
    for _ in range(steps):
        # BEGIN SOLUTION
        logits = router(x)
        loss = F.cross_entropy(logits, target) + beta * z_loss(logits)
        opt.zero_grad()
        loss.backward()
        opt.step()
        # END SOLUTION
    with torch.no_grad():
        return router(x).abs().mean().item()


# %%
from minillm.moe import router_z_loss

g = torch.Generator().manual_seed(2)
logits = torch.randn(40, 8, generator=g) * 4
torch.testing.assert_close(z_loss(logits), router_z_loss(logits))
plain, with_z = train_router(beta=0.0), train_router(beta=0.1)
print(f"mean |logit| without z-loss {plain:.1f}, with z-loss {with_z:.1f}")
assert with_z < 0.7 * plain, "the z-loss should keep the router's logits clearly smaller"
print("Exercise 3: correct")


# %% [markdown]
# ## Exercise 4: expert-choice routing
#
# In token-choice routing (the chapter's), tokens pick experts and load can be uneven. **Expert-choice** routing
# {cite}`zhou2022mixture` turns it around: each expert picks the `capacity` tokens that score it highest, so every
# expert processes exactly `capacity` tokens — perfect balance by construction — while a token may be picked by
# several experts or by none. With router probabilities `probs = softmax(scores)` over experts, write
# `expert_choice(x, experts, scores, capacity)` returning $y_t = \sum_{e \text{ picked } t} \mathrm{probs}_{t,e}\,
# \mathrm{FFN}_e(x_t)$, with one batched call per expert and `index_add` to combine.

# %%
def expert_choice(x: torch.Tensor, experts, scores: torch.Tensor, capacity: int) -> torch.Tensor:
    # x: (N, C), scores: (N, E) router logits -> (N, C)
    # BEGIN SOLUTION
    probs = scores.softmax(dim=-1)                                # (N, E)
    gate, token = probs.topk(capacity, dim=0)                     # (capacity, E): each expert's best tokens
    out = torch.zeros_like(x)
    for e, expert in enumerate(experts):
        out = out.index_add(0, token[:, e], expert(x[token[:, e]]) * gate[:, e:e + 1])
    return out
    # END SOLUTION


# %%
from minillm.moe import Expert

torch.manual_seed(3)
N, C, E, cap = 40, 16, 4, 10
experts = torch.nn.ModuleList(Expert(C, 32) for _ in range(E))
x, scores = torch.randn(N, C), torch.randn(N, E)
y = expert_choice(x, experts, scores, cap)
probs = scores.softmax(-1)
reference = torch.zeros(N, C)                                     # dense: every expert, masked to its picks
for e in range(E):
    picked = torch.zeros(N, dtype=torch.bool)
    picked[probs[:, e].topk(cap).indices] = True
    reference += (picked.float() * probs[:, e]).unsqueeze(1) * experts[e](x)
torch.testing.assert_close(y, reference, atol=1e-5, rtol=1e-5)
picks_per_token = torch.zeros(N)
for e in range(E):
    picks_per_token[probs[:, e].topk(cap).indices] += 1
print(f"each expert took exactly {cap} tokens; tokens picked by 0 experts: {(picks_per_token == 0).sum().item()}, "
      f"by 2 or more: {(picks_per_token >= 2).sum().item()}")
print("Exercise 4: correct")

# %% [markdown] tags=["solution-only"]
# **Discussion.** Expert choice guarantees balance, but a token's output now depends on the other tokens in the batch:
# whether an expert picks it depends on who else competes. That is harmless in training and in encoders, and awkward
# for autoregressive decoding, where the future tokens of a batch are not yet known — one reason decoder LLMs keep
# token-choice routing with a balancing loss.
