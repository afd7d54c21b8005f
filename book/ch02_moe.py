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
# # Chapter 2: Sparse mixture-of-experts, and what production MoE adds
#
# A dense transformer spends the same computation on every token: every parameter of every MLP touches every
# token. A **sparse mixture of experts** (MoE) replaces the MLP with $E$ independent MLPs — the *experts* — and a
# small *router* that sends each token to only $k$ of them {cite}`shazeer2017outrageously`. The model then has
# about $E/k$ times the MLP parameters of a dense model that does the same work per token. This is how
# Mixtral-style models hold many parameters while activating a fraction per token {cite}`jiang2024mixtral`.
#
# We start from **makeMoE** {cite}`makemoe2024`, a from-scratch character-level MoE language model in the spirit
# of makemore, and rebuild it piece by piece: the expert, the top-k router, the noisy top-k router, the sparse
# MoE block and the language model around it (reusing chapter 1's attention). Then we add what makeMoE leaves
# out and production systems rely on {cite}`fedus2022switch,zoph2022stmoe`:
#
# 1. a **load-balancing loss**, which pushes the router to spread tokens over the experts;
# 2. the **router z-loss**, which keeps router logits small;
# 3. **expert capacity** with token dropping, so one expert cannot be handed the whole batch (makeMoE's repository
#    has a variant with it; its main model, rebuilt here, has none);
# 4. a **fast dispatch** that sorts tokens by expert, then one that runs all experts in a single batched matrix
#    product on stacked weights — both proved equal to a dense reference — and their speed;
# 5. a fix for a makeMoE bug: its router adds noise at evaluation too.
#
# Everything lives in the subpackage `minillm.moe`: `router` (routers and their losses), `experts` (one expert, and
# E of them stored stacked), `dispatch` (four ways to send tokens to experts), `layer` (`SparseMoE`), `model` (the
# language model, with a KV cache), `config` and `init` (presets, dense baselines, initialisation), `monitoring`
# (expert load) and `claims` (the chapter's claims over seeds). Classes re-derived below are held equal to the
# package's by `tests/moe/test_ch02_notebook.py`.
#
# Then we ask what the technique is worth: we train a MoE language model that writes recognisable text, compare it
# with dense models under the same rules over several seeds, and time the dispatch against the cost of the
# experts' own matrix products.

# %% tags=["nbval-ignore-output"]
import math
from dataclasses import asdict, replace

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from myst_nb import glue

from minillm.core.notebook import chapter_setup

ctx = chapter_setup("Chapter 2: sparse mixture-of-experts", minutes_tiny=3, minutes_full=20)


# %% [markdown]
# ## 1. Experts and a router
#
# An **expert** is the transformer's position-wise MLP — makeMoE's is $C \to 4C \to \mathrm{ReLU} \to C$.
# The **router** is one linear layer $W_r \in \mathbb{R}^{E \times C}$ that scores the experts for a token $x$;
# we keep the $k$ best scores and normalise only over them:
#
# $$
# h(x) = W_r x, \qquad \mathcal{T}(x) = \mathrm{TopK}(h(x), k), \qquad
# g_e(x) = \frac{e^{h_e(x)}}{\sum_{j \in \mathcal{T}(x)} e^{h_j(x)}} \ \ (e \in \mathcal{T}(x)), \qquad
# y = \sum_{e \in \mathcal{T}(x)} g_e(x)\, \mathrm{FFN}_e(x).
# $$
#
# makeMoE writes the normalisation as a softmax over all $E$ logits after setting the non-chosen ones to
# $-\infty$; the zeros this produces form an $N \times E$ **gate matrix**. Noisy top-k gating
# {cite}`shazeer2017outrageously` adds Gaussian noise with a learned, per-token scale before choosing, so that
# early in training tokens also try experts that are not (yet) their favourites:
#
# $$
# h(x) = W_r x + \epsilon \odot \mathrm{softplus}(W_n x), \qquad \epsilon \sim \mathcal{N}(0, I).
# $$
#
# Noise is for exploration during training. makeMoE adds it unconditionally — also when evaluating and
# generating. We add it only in training mode and keep an `eval_noise` switch to reproduce makeMoE (section 7
# measures what that costs).

# %% tags=["package-twin"]
class Expert(nn.Module):
    # One expert: C -> hidden -> ReLU -> C, then dropout (makeMoE's MLP).

    def __init__(self, n_embd, hidden, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(n_embd, hidden)
        self.fc2 = nn.Linear(hidden, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(F.relu(self.fc1(x))))


class NoisyTopkRouter(nn.Module):
    # Noisy top-k gating: W_r x + eps * softplus(W_n x), keep the top k, softmax over them.

    def __init__(self, n_embd, num_experts, top_k, eval_noise=False):
        super().__init__()
        self.top_k = top_k
        self.route = nn.Linear(n_embd, num_experts)   # W_r: one score per expert
        self.noise = nn.Linear(n_embd, num_experts)   # W_n: per-token, per-expert noise scale
        self.eval_noise = eval_noise                  # True = makeMoE's behaviour

    def forward(self, x):                             # x: (N, C)
        logits = self.route(x)                        # (N, E)
        if self.training or self.eval_noise:          # makeMoE: always
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        top_logits, idx = logits.topk(self.top_k, dim=-1)                      # (N, k)
        sparse = torch.full_like(logits, float("-inf")).scatter(-1, idx, top_logits)
        return F.softmax(sparse, dim=-1), idx         # gate matrix (N, E), zero off the top k; idx (N, k)


# %% [markdown]
# **Verify.** With the same weights and the same random seed, our router and the package's
# `minillm.moe.NoisyTopkRouter` pick the same experts with the same weights, in training mode (noise on) and in
# evaluation mode (noise off). The package returns the $k$ gates directly; scattering them into an $N \times E$
# matrix gives makeMoE's gate matrix.

# %%
from minillm import moe
from minillm.moe.dispatch import gate_matrix

torch.manual_seed(0)
C, E, K = 32, 8, 2
ours = NoisyTopkRouter(C, E, K)
package = moe.NoisyTopkRouter(C, E, K)
package.load_state_dict(ours.state_dict())
x = torch.randn(100, C)
for mode in ("train", "eval"):
    ours.train(mode == "train"); package.train(mode == "train")
    torch.manual_seed(1); gates_ours, idx_ours = ours(x)
    torch.manual_seed(1); r = package(x)
    assert torch.equal(idx_ours, r.expert_idx)
    torch.testing.assert_close(gates_ours, gate_matrix(r.expert_idx, r.gates, E))
    print(f"{mode}: same experts for all {len(x)} tokens, same gates; each row sums to "
          f"{gates_ours.sum(-1).mean():.3f}")
package.eval()
assert torch.equal(package(x).gates, package(x).gates), "evaluation must be deterministic"


# %% [markdown]
# ## 2. The sparse MoE block, as makeMoE writes it
#
# makeMoE's block loops over the experts. For each expert it builds a boolean mask of the tokens that chose it,
# gathers those tokens, runs the expert on them, weights the result by the gate and adds it back:

# %% tags=["package-twin"]
class SparseMoE(nn.Module):
    # makeMoE's sparse MoE block: a per-expert masked loop.

    def __init__(self, n_embd, num_experts, top_k, hidden, dropout=0.0):
        super().__init__()
        self.router = NoisyTopkRouter(n_embd, num_experts, top_k)
        self.experts = nn.ModuleList(Expert(n_embd, hidden, dropout) for _ in range(num_experts))

    def forward(self, x):                             # x: (B, T, C)
        B, T, C = x.shape
        flat = x.reshape(-1, C)                       # (N, C), N = B*T tokens
        gates, idx = self.router(flat)                # (N, E), (N, k)
        out = torch.zeros_like(flat)
        for i, expert in enumerate(self.experts):
            mask = (idx == i).any(dim=-1)             # (N,) tokens routed to expert i
            if mask.any():
                out[mask] += expert(flat[mask]) * gates[mask, i].unsqueeze(1)
        return out.view(B, T, C)


# %% [markdown]
# Is this the function $y = \sum_{e \in \mathcal{T}} g_e \mathrm{FFN}_e(x)$? The obvious **dense reference**
# runs *every* expert on *every* token and multiplies by the gate matrix, whose zeros remove the experts that were
# not chosen. It does $E/k$ times the work, but it is hard to get wrong. The package's `SparseMoE` can run either
# (`dispatch="dense"` or `"masked_loop"`), plus the two fast paths of section 3; all must agree with our block.
# (The package stores its experts stacked, section 3 explains why; `load_state_dict` accepts makeMoE's per-expert
# keys and stacks them.)

# %%
from minillm.moe.dispatch import DISPATCH_NAMES

torch.manual_seed(0)
block = SparseMoE(C, E, K, hidden=4 * C).eval()
pkg_block = moe.SparseMoE(C, E, K, hidden=4 * C).eval()
pkg_block.load_state_dict(block.state_dict())
x = torch.randn(4, 16, C)
y = block(x)
flat = x.reshape(-1, C)
gates, idx = block.router(flat)
dense = sum(gates[:, [e]] * block.experts[e](flat) for e in range(E)).view_as(x)   # every expert, masked
torch.testing.assert_close(y, dense, atol=1e-5, rtol=0)
for name in DISPATCH_NAMES:
    pkg_block.dispatch = name
    torch.testing.assert_close(pkg_block(x), y, atol=1e-5, rtol=0)
print(f"makeMoE block == dense reference == package ({', '.join(DISPATCH_NAMES)}): "
      f"max |Δ| < 1e-5 on {flat.size(0)} tokens")


# %% [markdown]
# ## 3. Fast dispatch: sort the tokens by expert, then batch the experts
#
# The masked loop does the right amount of arithmetic but spends a boolean mask, a `nonzero`, a gather, a
# gather of gates and a masked scatter-add *per expert*, and its backward pass creates a full-size gradient
# buffer per expert. Production MoE implementations {cite}`gale2023megablocks` instead treat the $N \cdot k$
# (token, expert) **assignments** as a list:
#
# 1. flatten the chosen experts to a vector of $Nk$ expert ids (assignment $a$ belongs to token $\lfloor a/k \rfloor$);
# 2. `argsort` it once (stable), so each expert's assignments are contiguous;
# 3. gather the tokens in that order into one buffer and `split` it by the per-expert counts;
# 4. run each expert **once** on its contiguous slice, multiply by the gates;
# 5. `index_add` the results back to their tokens (summing each token's $k$ contributions).

# %% tags=["package-twin"]
def sorted_dispatch(x, experts, idx, gates_k):
    # x: (N, C); idx, gates_k: (N, k) chosen experts and their gates -> (N, C)
    N, k = idx.shape
    flat_expert = idx.reshape(-1)                                   # (N*k,) assignment a is token a // k
    order = torch.argsort(flat_expert, stable=True)                 # assignments grouped by expert
    token = order // k                                              # (N*k,) token of each sorted assignment
    counts = torch.bincount(flat_expert, minlength=len(experts)).tolist()
    chunks = x[token].split(counts)                                 # one contiguous (n_e, C) slice per expert
    y = torch.cat([expert(chunk) for expert, chunk in zip(experts, chunks)])   # (N*k, C)
    y = y * gates_k.reshape(-1)[order].unsqueeze(1)                 # weight by the gates
    return torch.zeros_like(x).index_add(0, token, y)               # sum the k results of each token


# %% [markdown]
# Sorting removes the masks, but there is still a Python loop of $E$ small matrix products. On a CPU each call
# costs a few microseconds of overhead whatever its size, and at decoding time — a handful of tokens per step — the
# overhead *is* the cost. The next step is to run **all experts in one call**. Store the experts' weights stacked,
# $W^{(1)} \in \mathbb{R}^{E \times H \times C}$ and $W^{(2)} \in \mathbb{R}^{E \times C \times H}$ (recent
# production MoE code stores experts this way), and give every expert a row of $S$ **slots** in a buffer
# $X \in \mathbb{R}^{E \times S \times C}$:
#
# 1. the slot of assignment $a$ is its rank among the assignments of the same expert — a running count, computed for
#    all assignments at once as a cumulative sum of one-hot rows (no sort needed);
# 2. $S$ is the busiest expert's count; shorter rows are padded with zeros (or $S$ is the expert capacity of
#    section 4: this buffer is exactly Switch Transformer's fixed-size expert buffer);
# 3. two batched matrix products compute every expert on its row: $Y_e = \mathrm{ReLU}(X_e W^{(1)\top}_e + b^{(1)}_e)\,W^{(2)\top}_e + b^{(2)}_e$;
# 4. read each assignment's result back from its (expert, slot) and mix a token's $k$ results, $\sum_k g_k y_k$.
#
# The number of operations no longer depends on $E$. The price is the padding: $E \cdot S$ rows are computed for
# $Nk$ assignments, so the more uneven the load, the more wasted work — another reason to balance it.
# `minillm.moe.experts.ExpertBank` holds the stacked weights (`bank[e]` is still expert $e$, so the per-expert
# dispatches run on it too):

# %% tags=["package-twin"]
def batched_dispatch(x, bank, idx, gates_k):
    # x: (N, C); bank: the E experts' stacked weights; idx, gates_k: (N, k) -> (N, C)
    N, k = idx.shape
    E = len(bank)
    flat_expert = idx.reshape(-1)                                          # (N*k,) assignment a is token a // k
    one_hot = flat_expert.unsqueeze(1) == torch.arange(E)                  # (N*k, E)
    slot = one_hot.cumsum(0).gather(1, flat_expert.unsqueeze(1)).squeeze(1) - 1   # rank within its expert
    S = int(slot.max()) + 1                                                # the busiest expert's count
    buffer = x.new_zeros(E, S, x.size(1))                                  # (E, S, C), zero padding
    buffer[flat_expert, slot] = x.repeat_interleave(k, dim=0)              # each assignment into its slot
    h = torch.relu(buffer @ bank.w1.transpose(1, 2) + bank.b1.unsqueeze(1))   # (E, S, H): all experts at once
    y = h @ bank.w2.transpose(1, 2) + bank.b2.unsqueeze(1)                 # (E, S, C)
    y = y[flat_expert, slot].view(N, k, -1)                                # (N, k, C): back from the slots
    return (gates_k.unsqueeze(-1) * y).sum(1)                              # sum_k g_k y_k


# %% [markdown]
# **Verify**, values and gradients — with respect to the input, the gates and every expert weight — against the
# dense reference. The bank is built from the same experts (`ExpertBank.from_experts`), so its gradient is the
# experts' gradients stacked:

# %%
from minillm.moe.dispatch import dispatch_dense, dispatch_masked_loop
from minillm.moe.experts import ExpertBank

torch.manual_seed(0)
experts = nn.ModuleList(Expert(C, 4 * C) for _ in range(E))
bank = ExpertBank.from_experts(experts)
x = torch.randn(300, C, requires_grad=True)
r = moe.TopkRouter(C, E, K)(x.detach())
gates_k = r.gates.clone().requires_grad_(True)
upstream = torch.randn(300, C)
params = [x, gates_k, *experts.parameters()]
grads = {}
for name, fn in (("dense", dispatch_dense), ("masked_loop", dispatch_masked_loop), ("sorted", sorted_dispatch)):
    out = fn(x, experts, r.expert_idx, gates_k)
    grads[name] = (out, torch.autograd.grad(out, params, upstream))
out = batched_dispatch(x, bank, r.expert_idx, gates_k)
g_x, g_gates, g_w1, g_b1, g_w2, g_b2 = torch.autograd.grad(out, [x, gates_k, bank.w1, bank.b1, bank.w2, bank.b2], upstream)
per_expert = [g for e in range(E) for g in (g_w1[e], g_b1[e], g_w2[e], g_b2[e])]  # experts.parameters() order
grads["batched"] = (out, [g_x, g_gates, *per_expert])
for name in ("masked_loop", "sorted", "batched"):
    torch.testing.assert_close(grads[name][0], grads["dense"][0], atol=1e-5, rtol=0)
    for g, g_ref in zip(grads[name][1], grads["dense"][1], strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
print(f"sorted == batched == masked loop == dense reference: outputs and {len(params)} gradients within 1e-5")

# %% [markdown]
# How much faster is it? Section 8 reads the benchmark; first we need a model to train.
#
# ## 4. What production adds: balancing, z-loss, capacity
#
# **Load balancing.** Nothing in the language-modelling loss asks the router to spread tokens. An expert that is
# slightly better early gets more tokens, learns faster, and gets even more — the rich get richer — and the
# others idle. Switch Transformer {cite}`fedus2022switch` adds, per layer,
#
# $$
# \mathcal{L}_{bal} = E \sum_{i=1}^{E} f_i\, P_i, \qquad
# f_i = \frac{1}{Nk}\sum_{x} \mathbb{1}[i \in \mathcal{T}(x)], \qquad P_i = \frac1N \sum_x p_i(x),
# $$
#
# where $f_i$ is the share of assignments expert $i$ received (a count: no gradient) and $P_i$ the mean router
# probability $p(x) = \mathrm{softmax}(h(x))$ over all $E$ experts (differentiable). It is 1 when both are
# uniform and grows as the load concentrates, up to $E/k$: a token picks $k$ *distinct* experts, so at worst $k$
# experts share all assignments ($f_i = 1/k$) and hold all the probability, giving $E \cdot \frac1k \cdot 1$.
# Its gradient lowers the probability of the busy experts.
# We weight it by $\alpha = 0.01$, Switch's value.
#
# **Router z-loss** {cite}`zoph2022stmoe`: $\mathcal{L}_z = \frac1N\sum_x \big(\log \sum_i e^{h_i(x)}\big)^2$
# penalises large router logits, which otherwise grow until the softmax saturates and round-off bites (it matters
# most in low precision). It is off by default here (`z_coef=0`); exercise 3 trains a router with and without it.
#
# **Expert capacity.** Switch Transformer gives each expert a buffer of
# $C_{e} = \lceil \text{capacity factor} \cdot Nk/E \rceil$ slots (fixed there, since its batches have a fixed
# size; here $N$ is whatever the call holds). Assignments beyond it are **dropped**: the token skips that expert and
# continues through the residual connection. We fill slots by priority — every token's first choice before any
# second choice — so a token loses its second expert before another loses its first. makeMoE's repository has a
# variant with expert capacity too; its main model, the one rebuilt here, has none.
#
# Capacity has a side effect at evaluation: whether a token keeps its experts depends on how many *other* tokens of
# the same call chose them, so its output depends on its batch-mates. `SparseMoE` therefore applies capacity in
# training only (`capacity_in_eval=True` restores dropping at evaluation); section 6 shows the difference.

# %%
from minillm.moe.dispatch import capacity_keep_mask, expert_capacity

n = 64
uniform_idx = torch.arange(n * K).remainder(E).view(n, K)     # each expert gets n*k/E assignments
collapsed_idx = torch.zeros(n, K, dtype=torch.long)           # everyone picks expert 0 ...
collapsed_idx[:, 1] = 1                                       # ... and expert 1
uniform_p = torch.full((n, E), 1 / E)
collapsed_p = torch.zeros(n, E); collapsed_p[:, :2] = 0.5
bal_uniform = moe.load_balancing_loss(uniform_p, uniform_idx).item()
bal_collapsed = moe.load_balancing_loss(collapsed_p, collapsed_idx).item()
cap = expert_capacity(n, K, E, capacity_factor=1.25)
dropped = 1 - capacity_keep_mask(collapsed_idx, E, cap).float().mean().item()
print(f"balance loss: uniform routing {bal_uniform:.2f}, two experts take everything {bal_collapsed:.2f} (= E/k)")
print(f"capacity factor 1.25 -> {cap} slots per expert; the collapsed routing drops {dropped:.0%} of assignments")
assert abs(bal_uniform - 1) < 1e-6 and abs(bal_collapsed - E / 2) < 1e-6

# %% [markdown]
# ## 5. The MoE language model
#
# `minillm.moe.model.MoELM` is chapter 1's GPT with `SparseMoE` in place of the MLP: token and position embeddings,
# blocks of $x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1 x)$ (chapter 1's `CausalSelfAttention`) and
# $x \leftarrow x + \mathrm{MoE}(\mathrm{LN}_2 x)$, a final LayerNorm and the output head. In training its loss is
# $\mathcal{L}_{CE} + \alpha \overline{\mathcal{L}_{bal}} + \beta \overline{\mathcal{L}_z}$ (averaged over layers);
# in evaluation mode it is the cross-entropy alone, comparable with a dense model's.
#
# **Does the architecture match makeMoE?** The `makemoe` preset rebuilds makeMoE's configuration — 8 layers,
# 8 heads, $C = 128$, context 32, 8 experts of width $4C$, top-2, ReLU, Kaiming init, bias-free query/key/value
# projections, an untied output head with bias. We count its parameters by building it:

# %%
from minillm.moe import MoELM, dense_baseline, moe_config

makemoe = MoELM(moe_config("makemoe", vocab_size=65))
n_makemoe = makemoe.num_params()
n_makemoe_active = makemoe.num_active_params()
print(makemoe.config)
print(f"{n_makemoe:,} parameters, of which {n_makemoe_active:,} are active for each token")
assert n_makemoe == 8_996_545, "makeMoE reports 8,996,545 parameters for this configuration"
glue("ch02_makemoe_params", f"{n_makemoe:,}", display=False)
glue("ch02_makemoe_active", f"{n_makemoe_active:,}", display=False)
del makemoe

# %% [markdown]
# The count is {glue:text}`ch02_makemoe_params`, exactly makeMoE's: same modules, same shapes. Only
# {glue:text}`ch02_makemoe_active` of them work on any one token. Two of makeMoE's choices we do *not* copy, as they
# change behaviour but not the count: its attention scales scores by $1/\sqrt{C}$ instead of $1/\sqrt{d_h}$ (we
# reuse chapter 1's attention), and its router adds noise at evaluation. This is the full profile's model; on a CPU
# we train a smaller one.
#
# ### Initialisation: Kaiming, Glorot or GPT-2?
#
# makeMoE initialises every linear layer, attention included, with Kaiming (He) normal,
# $\sigma = \sqrt{2/\text{fan\_in}}$ {cite}`he2015delving`, derived to keep the variance of ReLU activations
# constant, and suggests trying Glorot (Xavier) normal, $\sigma = \sqrt{2/(\text{fan\_in} + \text{fan\_out})}$
# {cite}`glorot2010understanding`. Chapter 1's GPT uses the GPT-2 rule instead: $\sigma = 0.02$, and
# $0.02/\sqrt{2L}$ for the projections that write into the residual stream. `MoEConfig.init` picks one
# (`expert_init` can give the experts and router another). Here is where each starts:

# %%
from minillm.data.char_tokenizer import CharTokenizer
from minillm.data.lm_batches import TokenSplits, get_batch
from minillm.data.shakespeare import load_shakespeare

text = load_shakespeare()
tokenizer = CharTokenizer.from_text(text)
V = tokenizer.vocab_size
splits = TokenSplits.from_tokens(tokenizer.encode(text), val_fraction=0.1)
print(f"{len(text):,} characters, vocabulary of {V}; train {len(splits.train):,}, validation {len(splits.val):,} tokens")

xb, yb = get_batch(splits.val, 32, 32, torch.Generator().manual_seed(0))
rows = {}
for scheme in ("kaiming", "glorot", "gpt2"):
    torch.manual_seed(0)
    m = MoELM(moe_config("makemoe", vocab_size=V, init=scheme)).eval()
    with torch.no_grad():
        logits, loss = m(xb, yb)
    rows[scheme] = loss.item()
    print(f"{scheme:8s} attention q/k/v std {m.blocks[0].attn.c_attn.weight.std().item():.3f}   "
          f"initial loss {rows[scheme]:.1f} nats (uniform guess ln V = {math.log(V):.2f})")
del m
assert rows["kaiming"] > rows["glorot"] > rows["gpt2"] > math.log(V) - 0.1

# %% [markdown]
# Kaiming starts furthest above the $\ln V$ of a uniform guess: its larger weights, in the untied output head too,
# make the first predictions overconfident. GPT-2's rule starts closest to it. Initial losses say little about
# how training goes, though; what decides is the loss after training, under the same schedule.
#
# The tiny model below uses chapter 1's rules: GELU experts and GPT-2 initialisation, the same as the dense model it
# is compared with.
#
# ## 6. A MoE language model on a CPU
#
# The tiny profile's MoE (`moe-tiny`): 2 layers, $C = 128$, 4 heads, context 64, 8 experts of width $2C$, top-2,
# makeMoE's noisy router, balancing $\alpha = 0.01$, no capacity, an output head tied to the embedding. Top-2 of
# width-$2C$ experts give each token as many hidden units as chapter 1's dense $4C$ MLP. `dense_baseline` builds
# the two dense models it is compared with in section 7: one MLP of width $4C$ (**equal active** parameters, what a
# token uses — with copied weights this is exactly chapter 1's GPT, `tests/moe/test_moe_lm_decoding.py`) and one of
# width $16C$ (**equal total** parameters, what is stored).

# %%
from minillm.moe import MOE_TRAIN_FULL, MOE_TRAIN_TINY

moe_cfg = moe_config(ctx.profile.pick("moe-tiny", "makemoe"), V)
train_cfg = ctx.profile.pick(MOE_TRAIN_TINY, MOE_TRAIN_FULL)
sizes = {}
for name, cfg in (("MoE", moe_cfg), ("dense, equal active", dense_baseline(moe_cfg, "active")),
                  ("dense, equal total", dense_baseline(moe_cfg, "total"))):
    probe = MoELM(cfg)
    sizes[name] = (probe.num_params(), probe.num_active_params())
    print(f"{name:20s} MLP width {cfg.hidden:5d} x {cfg.n_experts if cfg.ffn == 'moe' else 1}   "
          f"{sizes[name][0]:>10,} parameters, {sizes[name][1]:>10,} active per token")
del probe
print(f"schedule: {train_cfg.max_iters:,} steps of {train_cfg.batch_size} windows of {moe_cfg.block_size}, "
      f"AdamW lr {train_cfg.learning_rate:g} -> {train_cfg.min_lr:g}")
glue("ch02_moe_total", f"{sizes['MoE'][0]:,}", display=False)
glue("ch02_moe_active", f"{sizes['MoE'][1]:,}", display=False)
glue("ch02_iters", f"{train_cfg.max_iters:,}", display=False)

# %% [markdown]
# The MoE stores {glue:text}`ch02_moe_total` parameters and uses {glue:text}`ch02_moe_active` for each token. We
# train it with chapter 1's loop (`minillm.gpt.train.train_lm`: AdamW, warm-up then cosine, gradient clipping) for
# {glue:text}`ch02_iters` steps inside an mlflow run; `load_callback` records the experts' load on a fixed
# validation batch at each evaluation. The reported loss is the exact mean cross-entropy over the whole validation
# split, with nothing dropped.

# %% tags=["nbval-ignore-output"]
from minillm.core.tracking import mlflow_run
from minillm.gpt.train import evaluate_loss, train_lm
from minillm.moe import load_callback

x_probe, _ = get_batch(splits.val, moe_cfg.block_size, 64, torch.Generator().manual_seed(1), ctx.device)
val_tokens = splits.val[:ctx.profile.size(len(splits.val), smoke=4 * moe_cfg.block_size * 64)]
torch.manual_seed(ctx.seed)
model = MoELM(moe_cfg).to(ctx.device)
with mlflow_run("ch02-moe", run_name=f"MoE ({ctx.profile.name})", params=asdict(moe_cfg)) as tracker:
    history = train_lm(model, splits, train_cfg, ctx.device, tracker, eval_callback=load_callback(x_probe))
    val = evaluate_loss(model, val_tokens, moe_cfg.block_size, device=ctx.device)
    tracker.log_metrics({"val_loss_full": val})
print(f"validation loss {val:.3f} nats/char over {len(val_tokens):,} tokens; {history.tokens_seen:,} training tokens "
      f"in {history.wall_seconds:.0f} s wall, {history.cpu_seconds:.0f} s CPU")
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(history.iters, history.train_loss, "o-", ms=3, label="training (estimate)")
ax.plot(history.iters, history.val_loss, "o-", ms=3, label="validation (estimate)")
ax.axhline(val, color="grey", ls=":", label=f"validation, whole split: {val:.3f}")
ax.set(xlabel="step", ylabel="cross-entropy (nats/char)", title=f"The MoE language model ({ctx.profile.name} profile)")
ax.legend()
plt.show()
ctx.profile.assert_full_length(val < ctx.profile.pick(2.0, 1.75),
                               "the MoE should be a real character-level model: validation loss below "
                               f"{ctx.profile.pick(2.0, 1.75)} nats/char")
glue("ch02_val_moe", f"{val:.2f}", display=False)

# %% [markdown]
# The MoE reaches a validation loss of **{glue:text}`ch02_val_moe`** nats per character, well below what a bigram
# model (one character of context) can reach. (makeMoE's write-up trains its 9 M-parameter configuration for 5,000
# steps to about 1.75 on a GPU; that is the full profile, not run on a CPU.)
#
# ### Generating text, with a KV cache
#
# Chapter 1's `generate` works unchanged: `MoELM.new_cache` makes chapter 1's KV cache and `model(idx, cache=cache)`
# continues from the cached positions. Routing is per token and there is no capacity at evaluation, so a cached
# step routes each new token exactly as a full forward pass over the whole text does. We check it on the trained
# model, past the context window (where the learned positions force a refill):

# %%
from minillm.gpt.generation import generate

prompt = tokenizer.encode("ROMEO:\n").view(1, -1).to(ctx.device)  # (1, 7)
n_new = moe_cfg.block_size + 16
cached, logits_cached = generate(model, prompt, n_new, temperature=0.8, top_k=10, use_cache=True,
                                 generator=torch.Generator(ctx.device).manual_seed(0), return_logits=True)
recomputed, logits_recomputed = generate(model, prompt, n_new, temperature=0.8, top_k=10, use_cache=False,
                                         generator=torch.Generator(ctx.device).manual_seed(0), return_logits=True)
gap = (logits_cached - logits_recomputed).abs().max().item()
print(f"{n_new} tokens: identical samples {torch.equal(cached, recomputed)}, logits within 1e-4: {gap < 1e-4}")
assert torch.equal(cached, recomputed) and gap < 1e-4

# %% tags=["nbval-ignore-output"]
import re

words = set(re.findall(r"[a-z]+", text.lower()))
samples = {}
for label, temperature, top_k in (("temperature 0.8, top-k 10", 0.8, 10), ("temperature 1.0, no top-k", 1.0, None)):
    out = generate(model, prompt, ctx.profile.size(400, smoke=20), temperature=temperature, top_k=top_k,
                   generator=torch.Generator(ctx.device).manual_seed(1))
    samples[label] = tokenizer.decode(out[0].tolist())
    print(f"--- {label} ---\n{samples[label]}\n")
sample_words = re.findall(r"[a-z]+", samples["temperature 0.8, top-k 10"].lower())
real = sum(w in words for w in sample_words) / max(1, len(sample_words))
print(f"{real:.0%} of the sampled words (temperature 0.8, top-k 10) occur in the corpus")
ctx.profile.assert_full_length(real > 0.6, "a trained model writes mostly real words")
glue("ch02_real_words", f"{real:.0%}", display=False)

# %% [markdown]
# Speaker names, line breaks and, at temperature 0.8 with top-k 10, {glue:text}`ch02_real_words` of the words
# found in the corpus. Sampling from the full distribution (temperature 1, no top-k) invents more words.
#
# ### What the routers learned
#
# Which characters does each expert take? `routing_by_token` routes a batch and counts, per layer, how often a
# position holding character $v$ went to expert $e$. We route 16,384 validation characters and show, for each
# expert of the first layer, the characters it receives most often relative to their frequency; the **mutual
# information** between the character and the chosen expert (0 if routing ignored the character) and the router's
# **gate entropy** (the entropy of its softmax over all $E$ experts; $\ln E$ = undecided) summarise each layer.

# %% tags=["nbval-ignore-output"]
from minillm.moe import expert_load, routing_by_token

probe_text = splits.val[:ctx.profile.size(256, smoke=4) * moe_cfg.block_size].view(-1, moe_cfg.block_size)
table = routing_by_token(model, probe_text.to(ctx.device)).double().cpu()  # (L, V, E) counts


def mutual_information(counts: torch.Tensor) -> float:
    p = counts / counts.sum()
    pv, pe = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    return float((p[nz] * (p[nz] / (pv * pe).expand_as(p)[nz]).log()).sum())


entropy = expert_load(model, probe_text.to(ctx.device))["entropy"]
mi = [mutual_information(table[layer]) for layer in range(moe_cfg.n_layer)]
for layer in range(moe_cfg.n_layer):
    print(f"layer {layer}: mutual information character-expert {mi[layer]:.2f} nats, "
          f"gate entropy {float(entropy[layer]):.2f} nats (ln E = {math.log(moe_cfg.n_experts):.2f})")
share = table[0] / table[0].sum(1, keepdim=True).clamp_min(1)  # (V, E): where each character goes
seen = table[0].sum(1) >= 20
print("layer 0, the characters each expert takes most often, relative to its overall share:")
for e in range(moe_cfg.n_experts):
    lift = torch.where(seen, share[:, e] / (table[0][:, e].sum() / table[0].sum()), torch.zeros(()))
    top = lift.topk(6).indices.tolist()
    print(f"  expert {e}: " + " ".join(repr(tokenizer.decode([v])) for v in top))
fig, ax = plt.subplots(figsize=(12, 3))
order = [v for v in range(V) if seen[v]]
ax.imshow(share[order].T, aspect="auto", cmap="viridis")
ax.set_xticks(range(len(order)), [repr(tokenizer.decode([v]))[1:-1] for v in order], fontsize=7)
ax.set(ylabel="expert", title="Layer 0: share of each character's assignments going to each expert")
plt.show()
assert 0 < float(entropy.min()) and float(entropy.max()) <= math.log(moe_cfg.n_experts) + 1e-6, "0 < entropy <= ln E"
ctx.profile.assert_full_length(min(mi) > 0.05, "the trained routers' choices depend on the character")
glue("ch02_mi_layer0", f"{mi[0]:.2f}", display=False)

# %% [markdown]
# The first layer's router reads a representation that is still mostly the character itself plus its position, and
# its choice depends on the character (mutual information {glue:text}`ch02_mi_layer0` nats; 0 would mean routing
# ignores it): the lists above show which characters each expert takes more often than its overall share.
#
# ### Capacity at evaluation, and makeMoE's evaluation noise
#
# Two rules make this model's evaluation deterministic and per-sequence. First, no capacity at evaluation. Give the
# trained model a capacity factor of 1 and apply it at evaluation: the same sequence, evaluated alone or with 31
# other sequences, then gets different outputs.

# %%
xs, _ = get_batch(splits.val, moe_cfg.block_size, 32, torch.Generator().manual_seed(3), ctx.device)
same = {}
for in_eval in (False, True):
    for layer in model.moe_layers:
        layer.capacity_factor, layer.capacity_in_eval = 1.0, in_eval
    with torch.no_grad():
        model.eval()
        same[in_eval] = torch.allclose(model(xs)[0][:1], model(xs[:1])[0], atol=1e-5)
for layer in model.moe_layers:
    layer.capacity_factor, layer.capacity_in_eval = moe_cfg.capacity_factor, False
print(f"sequence 0 alone vs in a batch of 32 — same logits without capacity at evaluation: {same[False]}, "
      f"with capacity 1.0 at evaluation: {same[True]}")
assert same[False] and not same[True]

# %% [markdown]
# Second, router noise in training only. makeMoE adds it at evaluation too; `eval_noise=True` reproduces that.
# Evaluate the same validation batches five times each way:

# %% tags=["nbval-ignore-output"]
xv, yv = get_batch(splits.val, moe_cfg.block_size, ctx.profile.size(128, smoke=8), torch.Generator().manual_seed(2),
                   ctx.device)


def eval_losses(repeats=5):
    with torch.no_grad():
        model.eval()
        return torch.tensor([model(xv, yv)[1].item() for _ in range(repeats)])


clean = eval_losses()
for layer in model.moe_layers:
    layer.router.eval_noise = True
noisy = eval_losses()
for layer in model.moe_layers:
    layer.router.eval_noise = False
print(f"noise off (ours):    {[round(v, 4) for v in clean.tolist()]}")
print(f"noise on (makeMoE):  {[round(v, 4) for v in noisy.tolist()]}")
assert float(clean.max() - clean.min()) < 1e-5, "without noise, evaluation repeats (up to float summation order)"
ctx.profile.assert_full_length(noisy.mean() > clean.mean(), "evaluation noise routes tokens to worse experts")
glue("ch02_noise_cost", f"{noisy.mean() - clean.mean():+.3f}", display=False)

# %% [markdown]
# Without noise the five evaluations repeat; with makeMoE's noise each is a random draw, and the mean loss moves by
# {glue:text}`ch02_noise_cost` nats. The effect is small for this trained model, but a reported validation loss should
# not depend on a random draw, and generated text not on one beyond the sampling we asked for. The fix is one
# condition, `if self.training`.
#
# ## 7. Is it worth it? The MoE against dense models, over seeds
#
# One run proves little: another seed draws other weights and other batches. `studies/ch02_moe_vs_dense.py` trains
# the MoE and both dense baselines on the same three seeds (a seed fixes the initial weights and the batches, so the
# three models of one seed see the same data in the same order: a *paired* comparison) under one set of rules: GELU,
# GPT-2 init, no capacity anywhere, one schedule. To fit this machine's budget the committed run trains for 300 steps
# (warm-up 30, cosine to the same final rate), shorter than the model above. Every 30 steps each run records the exact
# validation loss on 16,384 validation tokens, with the tokens seen and the training time so far; at the end, the
# exact loss over the whole split. This section reads the study's JSON; `tests/moe/test_ch02_study.py` regenerates it
# in miniature.

# %% tags=["nbval-ignore-output"]
from minillm.core.bench import read_results, results_path
from minillm.core.claims import verdict
from minillm.core.paths import project_root
from minillm.moe.claims import paired, tag_interval

def latest_results(name, command, folder=None):
    """This profile's result on this device, else on the CPU, else the tiny profile's (said so)."""
    for profile, device in ((ctx.profile.name, ctx.device.type), (ctx.profile.name, "cpu"), ("tiny", "cpu")):
        path = results_path(name, profile, device, folder)
        if path.exists():
            if (profile, device) != (ctx.profile.name, ctx.device.type):
                print(f"[no {ctx.profile.name}-profile result on {ctx.device.type} yet: showing {path.name}]")
            return read_results(path, command)
    return read_results(results_path(name, ctx.profile.name, ctx.device.type, folder), command)


study = latest_results("ch02_moe_vs_dense", "python studies/ch02_moe_vs_dense.py --iters 300",
                       project_root() / "studies" / "results")
runs = study["runs"]
models = {"moe": "MoE", "dense-active": "dense, equal active", "dense-total": "dense, equal total"}
print(f"{study['schedule']['max_iters']} steps, seeds {sorted({r['seed'] for r in runs})}, "
      f"measured on {study['machine']['device_name']} under load ({study['threads']} thread per run)")
print(f"{'model':22s} {'parameters':>11s} {'active':>9s}  validation loss, mean [95% interval]  CPU s/run")
for tag, label in models.items():
    first = next(r for r in runs if r["tag"] == tag)
    ci = tag_interval(runs, tag)
    cpu = sum(r["train_cpu_s"] for r in runs if r["tag"] == tag) / ci.n
    print(f"{label:22s} {first['params']['total']:11,d} {first['params']['active']:9,d}  "
          f"{ci.format('.3f'):36s} {cpu:6.0f}")
diffs = {}
for dense in ("dense-active", "dense-total"):
    diffs[dense] = paired(runs, dense, "moe")
    print(f"{models[dense]} - MoE, paired over seeds: {diffs[dense].format('.3f')} nats -> "
          f"{verdict(diffs[dense], 'the MoE is better', 'the MoE is worse')}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for tag, label in models.items():
    for i, r in enumerate(sorted((r for r in runs if r["tag"] == tag), key=lambda r: r["seed"])):
        c = r["curve"]
        kw = dict(color=f"C{list(models).index(tag)}", alpha=0.8, lw=1, label=label if i == 0 else None)
        ax1.plot([t / 1e6 for t in c["tokens"]], c["val_subset"], **kw)
        ax2.plot(c["wall_s"], c["val_subset"], **kw)
ax1.set(xlabel="training tokens (millions)", ylabel="validation loss (16,384 tokens)", title="Loss against tokens")
ax2.set(xlabel="training wall time (s, shared machine, under load)", title="Loss against measured time")
for ax in (ax1, ax2):
    ax.set_ylim(top=2.6)
    ax.legend()
plt.show()
assert {r["tag"] for r in runs} == set(models) and min(ci.n for ci in map(lambda t: tag_interval(runs, t), models)) >= 3
assert all(1.0 < tag_interval(runs, t).estimate < math.log(V) - 1.0 for t in models), "every model learned, none diverged"
for dense, d in diffs.items():
    glue(f"ch02_gap_{dense}", d.format(".3f"), display=False)
    glue(f"ch02_verdict_{dense}", verdict(d, "the MoE is better", "the MoE is worse"), display=False)
glue("ch02_study_iters", f"{study['schedule']['max_iters']}", display=False)

# %% [markdown]
# After {glue:text}`ch02_study_iters` steps, the dense model at equal *active* parameters minus the MoE is
# {glue:text}`ch02_gap_dense-active` nats (paired over seeds): {glue:text}`ch02_verdict_dense-active`.
# Against the dense model at equal *total* parameters the difference is {glue:text}`ch02_gap_dense-total` nats:
# {glue:text}`ch02_verdict_dense-total`. Three seeds make coarse intervals; they resolve only effects that are
# large against the seed-to-seed spread. Two caveats bound what this shows: one learning rate serves all three models,
# tuned for none of them, and the run is short — in a short run each expert sees about $k/E$ of the tokens.
#
# Per token of training, the right panel is the honest cost: on a CPU the MoE's routing, gathers and eight small
# matrix products take more time than one dense product of the same arithmetic, so at equal wall time the comparison
# shifts toward the dense models. These wall times come from a shared machine under a load that varied from run to
# run, so read them as rough; the table's CPU seconds per run are steadier.
#
# ## 8. Measure: dispatch speed against the floor
#
# `benchmarks/ch02_moe_dispatch.py` times each dispatch strategy for one `SparseMoE` layer of this profile's size
# (8 experts, top-2) at 8 to 2,048 tokens, from decoding steps to a training batch, beside a **floor**: the same
# experts' two batched matrix products on perfectly balanced, already grouped tokens — what any dispatch must at least
# pay. It times the dispatch alone (inference, and forward + backward) and the whole layer, with every variant
# interleaved round by round so a burst of load hits all alike, and reports the fastest round. Before timing it checks
# that all strategies produce the masked loop's output within $10^{-5}$. This section only reads its JSON.

# %% tags=["nbval-ignore-output"]
bench = latest_results("ch02_moe_dispatch", "python benchmarks/ch02_moe_dispatch.py")
print(f"measured on {bench['machine']['device_name']} ({bench['threads']} threads), load average "
      f"{bench['load_average']['before'][0]:.1f} before the run")
counts = list(bench["by_tokens"])
print(f"{'tokens':>7s} {'batched/floor':>14s} {'(training)':>11s} {'padding':>8s}  batched vs masked loop: "
      "dispatch, dispatch training, layer, layer training")
for n in counts:
    row = bench["by_tokens"][n]
    assert max(row["max_abs_diff_vs_masked_loop"].values()) <= bench["tolerance"]
    fast = [row[mode]["speedup_vs_masked_loop"]["batched"] for mode in ("dispatch", "dispatch_train",
                                                                                  "forward", "train")]
    print(f"{n:>7s} {row['dispatch']['over_floor']['batched']:14.2f} {row['dispatch_train']['over_floor']['batched']:11.2f} "
          f"{row['padding']:8.2f}  " + "  ".join(f"{s:.2f}x" for s in fast))
fig, ax = plt.subplots(figsize=(7, 3.8))
for mode, label in (("dispatch", "inference"), ("dispatch_train", "forward + backward")):
    ax.plot([int(n) for n in counts], [bench["by_tokens"][n][mode]["over_floor"]["batched"] for n in counts], "o-",
            label=f"batched dispatch / floor, {label}")
ax.plot([int(n) for n in counts], [bench["by_tokens"][n]["padding"] for n in counts], "k:", label="padding (rows computed per useful row)")
ax.axhline(1.0, color="grey", lw=0.8)
ax.set(xscale="log", xlabel="tokens per call", ylabel="time / floor's time", title="Dispatch cost over the experts' own products")
ax.legend(fontsize=8)
plt.show()
ratio = {n: bench["by_tokens"][n]["dispatch"]["over_floor"]["batched"] for n in counts}
glue("ch02_floor_small", f"{ratio[counts[0]]:.1f}", display=False)
glue("ch02_floor_large", f"{ratio[counts[-1]]:.1f}", display=False)
glue("ch02_pad_large", f"{bench['by_tokens'][counts[-1]]['padding']:.2f}", display=False)
glue("ch02_speed_small", f"{bench['by_tokens'][counts[0]]['dispatch']['speedup_vs_masked_loop']['batched']:.1f}",
     display=False)
glue("ch02_speed_large", f"{bench['by_tokens'][counts[-1]]['dispatch']['speedup_vs_masked_loop']['batched']:.1f}",
     display=False)
glue("ch02_bench_small", counts[0], display=False)
glue("ch02_bench_large", counts[-1], display=False)
assert all(r >= 0.8 for r in ratio.values()), "no dispatch is much faster than the experts' products alone"

# %% [markdown]
# In inference the batched dispatch costs {glue:text}`ch02_floor_small`× the floor at {glue:text}`ch02_bench_small`
# tokens and {glue:text}`ch02_floor_large`× at {glue:text}`ch02_bench_large`, while running
# {glue:text}`ch02_speed_small`× and {glue:text}`ch02_speed_large`× as fast as makeMoE's masked loop. At a few
# tokens the experts' products are tiny and fixed costs dominate: building the slot indices, one synchronisation
# to size the buffer (`int(slot.max())`), allocations and the gather and scatter. With many tokens the products
# dominate, and the padding becomes part of the cost: every expert's buffer is as long as the busiest expert's, here
# {glue:text}`ch02_pad_large` rows computed per useful row at {glue:text}`ch02_bench_large` tokens even with the
# near-uniform routing of an untrained router; the gather and scatter of every assignment come on top. Production
# kernels avoid the padding with a grouped matrix multiplication over variable-sized groups
# {cite}`gale2023megablocks`. These timings come from a shared machine under heavy load (the JSON records the load
# average), which disturbs the larger sizes most: read them as rough, and rerun the benchmark on an idle machine.

# %% [markdown]
# ## Summary
#
# * A sparse MoE layer is a router plus $E$ MLPs; top-$k$ routing makes each token pay for $k$ of them. makeMoE's
#   architecture rebuilt here has exactly its {glue:text}`ch02_makemoe_params` parameters.
# * The Switch balancing loss is 1 for uniform routing and at most $E/k$; it, not the router noise, is what spreads
#   the load. Router noise belongs to training only, and capacity limits belong to training only too, or a token's
#   output depends on its batch-mates.
# * A two-layer MoE trained for {glue:text}`ch02_iters` steps on a CPU reaches {glue:text}`ch02_val_moe` nats per
#   character and writes Shakespeare-like text; chapter 1's KV cache decodes it exactly as recomputation does.
# * Against dense models over three seeds (300 steps, one learning rate for all), per training token: against the
#   dense model at equal active parameters, {glue:text}`ch02_verdict_dense-active`; against the one at equal total
#   parameters, {glue:text}`ch02_verdict_dense-total`. Per second of CPU time the routing's overhead counts against
#   the MoE.
# * Sorting or slotting assignments by expert computes exactly what the dense reference computes; the batched
#   dispatch's distance to the experts' own products is fixed overhead at a few tokens and padding at many.
#
# ## Exercises
#
# The exercises for this chapter are in `exercises/ch02_moe.ipynb` (worked answers in `solutions/ch02_moe.ipynb`):
#
# 1. the Switch load-balancing loss, from its definition;
# 2. expert capacity with choice-major priority;
# 3. the router z-loss, and what it does to the logits' scale;
# 4. expert-choice routing, where experts pick their tokens.
#
# The works cited are listed on the {doc}`references <references>` page.
