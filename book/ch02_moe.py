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
# 1. a **load-balancing loss**, without which a few experts take most tokens;
# 2. the **router z-loss**, which keeps router logits small;
# 3. **expert capacity** with token dropping, so one expert cannot be handed the whole batch;
# 4. a **fast dispatch** that sorts tokens by expert, then one that runs all experts in a single batched matrix
#    product on stacked weights — both proved equal to a dense reference — and their speed;
# 5. a fix for a makeMoE bug: its router adds noise at evaluation too.
#
# Everything lives in the subpackage `minillm.moe`: `router` (routers and their losses), `experts` (one expert, and
# E of them stored stacked), `dispatch` (four ways to send tokens to experts), `layer` (`SparseMoE`), `model` (the
# language model) and `monitoring` (expert load). Classes re-derived below are held equal to
# the package's by `tests/test_ch02_notebook.py`.

# %% tags=["nbval-ignore-output"]
import math
from dataclasses import asdict, replace

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from myst_nb import glue

from minillm.core.notebook import chapter_setup

ctx = chapter_setup("Chapter 2: sparse mixture-of-experts", minutes_tiny=4, minutes_full=40)


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
# uniform, $E$ when everything goes to one expert, and its gradient lowers the probability of the busy experts.
# We weight it by $\alpha = 0.01$, Switch's value.
#
# **Router z-loss** {cite}`zoph2022stmoe`: $\mathcal{L}_z = \frac1N\sum_x \big(\log \sum_i e^{h_i(x)}\big)^2$
# penalises large router logits, which otherwise grow until the softmax saturates and round-off bites (it matters
# most in low precision). It is off by default here (`z_coef=0`) and the solutions notebook studies it.
#
# **Expert capacity.** On real hardware each expert gets a fixed buffer of
# $C_{e} = \lceil \text{capacity factor} \cdot Nk/E \rceil$ slots. Assignments beyond it are **dropped**:
# the token skips that expert and continues through the residual connection. We fill slots by priority — every
# token's first choice before any second choice — so a token loses its second expert before another loses its
# first.

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
print(f"balance loss: uniform routing {bal_uniform:.2f}, two experts take everything {bal_collapsed:.2f} (= E/2)")
print(f"capacity factor 1.25 -> {cap} slots per expert; the collapsed routing drops {dropped:.0%} of assignments")
assert abs(bal_uniform - 1) < 1e-6 and abs(bal_collapsed - E / 2) < 1e-6

# %% [markdown]
# ## 5. The MoE language model
#
# `minillm.moe.model.MoELM` is chapter 1's GPT with `SparseMoE` in place of the MLP: token and position embeddings,
# blocks of $x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1 x)$ (chapter 1's `CausalSelfAttention`) and
# $x \leftarrow x + \mathrm{MoE}(\mathrm{LN}_2 x)$, a final LayerNorm and the output head. In training its loss is
# $\mathcal{L}_{CE} + \alpha \overline{\mathcal{L}_{bal}} + \beta \overline{\mathcal{L}_z}$ (averaged over layers);
# in evaluation mode it is the cross-entropy alone, comparable with the dense GPT's.
#
# **Does the architecture match makeMoE?** The `makemoe` preset rebuilds makeMoE's configuration — 8 layers,
# 8 heads, $C = 128$, context 32, 8 experts of width $4C$, top-2, bias-free query/key/value projections, an untied
# output head with bias. We count its parameters by building it:

# %%
from minillm.moe.model import MoELM, moe_config

makemoe = MoELM(moe_config("makemoe", vocab_size=65))
n_makemoe = makemoe.num_params()
n_makemoe_active = makemoe.num_active_params()
print(makemoe.config)
print(f"{n_makemoe:,} parameters, of which {n_makemoe_active:,} are active for each token")
assert n_makemoe == 8_996_545, "makeMoE reports 8,996,545 parameters for this configuration"
glue("ch02_makemoe_params", f"{n_makemoe:,}", display=False)
glue("ch02_makemoe_active", f"{n_makemoe_active:,}", display=False)

# %% [markdown]
# The count is {glue:text}`ch02_makemoe_params`, exactly makeMoE's: same modules, same shapes. Only
# {glue:text}`ch02_makemoe_active` of them work on any one token. Two of makeMoE's choices we do *not* copy, as they
# change behaviour but not the count: its attention scales scores by $1/\sqrt{C}$ instead of $1/\sqrt{d_h}$ (we
# reuse chapter 1's attention), and its router adds noise at evaluation.
#
# ### Initialisation: Kaiming or Glorot?
#
# makeMoE initialises every linear layer with Kaiming (He) normal, $\sigma = \sqrt{2/\text{fan\_in}}$
# {cite}`he2015delving`, derived to keep the variance of ReLU activations constant. Glorot (Xavier) normal,
# $\sigma = \sqrt{2/(\text{fan\_in} + \text{fan\_out})}$ {cite}`glorot2010understanding`, balances forward and
# backward variance for linear units. `MoEConfig.init` picks one (biases start at zero, embeddings at
# $\mathcal{N}(0, 0.02^2)$). In makeMoE's model the difference shows at the output: the untied head maps
# $C = 128$ features to 65 logits, and Kaiming's larger weights make the first predictions overconfident.

# %%
from minillm.data.lm_batches import TokenSplits, get_batch
from minillm.data.shakespeare import load_shakespeare
from minillm.data.char_tokenizer import CharTokenizer

text = load_shakespeare()
tokenizer = CharTokenizer.from_text(text)
V = tokenizer.vocab_size
splits = TokenSplits.from_tokens(tokenizer.encode(text), val_fraction=0.1)
print(f"{len(text):,} characters, vocabulary of {V}; train {len(splits.train):,}, validation {len(splits.val):,} tokens")

xb, yb = get_batch(splits.val, 32, 32, torch.Generator().manual_seed(0))
rows = {}
for scheme in ("kaiming", "glorot"):
    torch.manual_seed(0)
    m = MoELM(moe_config("makemoe", vocab_size=V, init=scheme)).eval()
    with torch.no_grad():
        logits, loss = m(xb, yb)
    rows[scheme] = (loss.item(), logits.std().item(), m.blocks[0].moe.experts.w1[0].std().item())
    print(f"{scheme:8s} expert fc1 std {rows[scheme][2]:.3f}   logit std {rows[scheme][1]:.2f}   "
          f"initial loss {rows[scheme][0]:.2f} nats (uniform guess ln V = {math.log(V):.2f})")
assert rows["kaiming"][0] > rows["glorot"][0] > math.log(V) - 0.1

# %% [markdown]
# Both start above the $\ln V$ of a uniform guess, Kaiming further: its larger output weights make the first
# predictions overconfident. The smaller models we train below tie the output head to the embedding (like chapter 1's GPT),
# so their first predictions are near-uniform under either scheme; we use Kaiming, as makeMoE does.
#
# ## 6. Training: the MoE against a dense GPT with the same active parameters
#
# To compare fairly we give the dense GPT of chapter 1 the same embedding width, depth, heads and context, and the
# MoE 8 experts of width $2C$ with top-2 routing, so each token passes through $2 \times 2C = 4C$ hidden units —
# the dense MLP's width. The MoE then has ~{glue:text}`ch02_total_over_active`× as many parameters, at the same
# work per token (plus the router). All MoE runs use a capacity factor of 1.25, Switch's default.

# %%
from minillm.gpt import GPT, gpt_config
from minillm.gpt.train import LM_TRAIN_FULL, LMTrainConfig

moe_cfg = moe_config(ctx.profile.pick("moe-tiny", "moe-small"), V, capacity_factor=1.25)
gpt_cfg = gpt_config("gpt-tiny", V, block_size=moe_cfg.block_size, n_layer=moe_cfg.n_layer,
                     n_head=moe_cfg.n_head, n_embd=moe_cfg.n_embd, dropout=moe_cfg.dropout)
train_cfg = ctx.profile.pick(
    LMTrainConfig(max_iters=300, batch_size=16, learning_rate=3e-3, min_lr=3e-4, warmup_iters=30,
                  eval_interval=50, eval_iters=5),
    replace(LM_TRAIN_FULL, batch_size=16, eval_interval=250, eval_iters=50))

def count(model):
    return sum(p.numel() for p in model.parameters())

torch.manual_seed(ctx.seed)
dense_model = GPT(gpt_cfg).to(ctx.device)
probe_moe = MoELM(moe_cfg)
print(moe_cfg)
print(f"dense GPT: {count(dense_model):,} parameters")
print(f"MoE:       {probe_moe.num_params():,} parameters, {probe_moe.num_active_params():,} active per token")
ratio_active = probe_moe.num_active_params() / count(dense_model)
assert abs(ratio_active - 1) < 0.03, "active parameters should match the dense model's within 3%"
glue("ch02_total_over_active", f"{probe_moe.num_params() / probe_moe.num_active_params():.1f}", display=False)
glue("ch02_active_ratio", f"{ratio_active:.3f}", display=False)

# %% [markdown]
# The MoE's active parameters are {glue:text}`ch02_active_ratio`× the dense model's (the routers and the second
# expert's biases are the difference). Every run goes through `minillm.gpt.train.train_lm` inside an mlflow run. At each
# evaluation, `minillm.moe.monitoring.load_callback` routes a fixed validation batch and logs the share of assignments each
# expert receives in each layer, the busiest expert's share relative to the uniform $1/E$, the dropped fraction and
# the balance loss. The four runs:
#
# | run | router noise | balancing loss |
# |---|---|---|
# | dense GPT | — | — |
# | MoE, balanced | yes | $\alpha = 0.01$ |
# | MoE, no balancing | yes | $\alpha = 0$ |
# | MoE, no balancing, no noise | no | $\alpha = 0$ |

# %% tags=["nbval-ignore-output"]
from minillm.moe.monitoring import load_callback, load_history
from minillm.core.tracking import mlflow_run
from minillm.gpt.train import evaluate_loss, train_lm

x_probe, _ = get_batch(splits.val, moe_cfg.block_size, 64, torch.Generator().manual_seed(1), ctx.device)
val_tokens = splits.val[:ctx.profile.pick(32_768, len(splits.val))]   # the reported loss: exact over these tokens
variants = {
    "dense GPT": None,
    "MoE, balanced": {},
    "MoE, no balancing": {"balance_coef": 0.0},
    "MoE, no balancing, no noise": {"balance_coef": 0.0, "noisy": False},
}
runs = {}
for name, overrides in variants.items():
    torch.manual_seed(ctx.seed)
    if overrides is None:
        model, cfg, callback = GPT(gpt_cfg).to(ctx.device), gpt_cfg, None
    else:
        cfg = replace(moe_cfg, **overrides)
        model, callback = MoELM(cfg).to(ctx.device), load_callback(x_probe)
    with mlflow_run("ch02-moe", run_name=f"{name} ({ctx.profile.name})", params=asdict(cfg)) as tracker:
        history = train_lm(model, splits, train_cfg, ctx.device, tracker, eval_callback=callback)
        val = evaluate_loss(model, val_tokens, cfg.block_size, device=ctx.device)
        tracker.log_metrics({"val_loss_full": val})
    runs[name] = {"model": model, "cfg": cfg, "history": history, "val": val}
    print(f"{name:28s} val loss {val:.3f}   {history.tokens_per_second:8,.0f} tokens/s   "
          f"({history.wall_seconds:.0f} s wall, {history.cpu_seconds:.0f} s CPU)")
assert all(r["val"] < math.log(V) - 1.0 for r in runs.values()), "every model should learn well beyond uniform"

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(7, 4))
for name, r in runs.items():
    ax.plot(r["history"].iters, r["history"].val_loss, "o-", ms=3, label=name)
ax.set(xlabel="iteration", ylabel="validation cross-entropy (nats/char)",
       title=f"Dense GPT vs MoE at equal active parameters ({ctx.profile.name} profile)")
ax.legend()
plt.show()

dense, balanced = runs["dense GPT"], runs["MoE, balanced"]
speed_ratio = balanced["history"].tokens_per_second / dense["history"].tokens_per_second
print(f"{'run':28s} {'params':>9s} {'active':>9s} {'val loss':>9s} {'tokens/s':>9s}")
for name, r in runs.items():
    m = r["model"]
    active = m.num_active_params() if isinstance(m, MoELM) else count(m)
    print(f"{name:28s} {count(m):9,d} {active:9,d} {r['val']:9.3f} {r['history'].tokens_per_second:9,.0f}")
glue("ch02_val_dense", f"{dense['val']:.3f}", display=False)
glue("ch02_val_moe", f"{balanced['val']:.3f}", display=False)
glue("ch02_speed_ratio", f"{speed_ratio:.2f}", display=False)
glue("ch02_iters", f"{train_cfg.max_iters:,}", display=False)
glue("ch02_val_tokens", f"{len(val_tokens):,}", display=False)
gap = dense["val"] - balanced["val"]
glue("ch02_verdict", "below" if gap > 0 else "above", display=False)
glue("ch02_val_gap_abs", f"{abs(gap):.3f}", display=False)
assert abs(gap) < 0.25, "at equal active parameters the two models should land close to each other"

# %% [markdown]
# After {glue:text}`ch02_iters` iterations the balanced MoE reaches a validation loss of
# **{glue:text}`ch02_val_moe`**, {glue:text}`ch02_val_gap_abs` nats {glue:text}`ch02_verdict` the dense GPT's
# **{glue:text}`ch02_val_dense`** (exact mean cross-entropy over the first {glue:text}`ch02_val_tokens` validation
# tokens), and trains at {glue:text}`ch02_speed_ratio`× the dense model's tokens per second. Two effects pull in
# opposite directions. The MoE has more parameters to store knowledge in, but each expert sees only about $k/E$ of the
# tokens, so in a short run each expert is trained on a quarter of the data the dense MLP sees; the advantage of
# sparse models shows up with longer training and larger data {cite}`fedus2022switch`. And the routing is not free on
# a CPU: the router, the sort, the gathers and eight small matrix products instead of one large one cost time that a
# dense MLP does not pay. (Timings from a shared machine are noisy; the profile's full configuration on a GPU trains
# makeMoE-sized models for 5,000 iterations.)
#
# ## 7. Expert load over training
#
# The callback recorded, at every evaluation, how the probe batch's assignments spread over the experts. Each panel
# shows one layer of one run: time runs left to right, each row is an expert, and the colour is its share relative
# to the uniform share $1/E$ (1 = its fair share).

# %% tags=["nbval-ignore-output"]
moe_runs = {k: v for k, v in runs.items() if k != "dense GPT"}
L, n_exp = moe_cfg.n_layer, moe_cfg.n_experts
loads = {name: load_history(r["history"].extra, L, n_exp) * n_exp for name, r in moe_runs.items()}  # (evals, L, E)
vmax = max(float(l.max()) for l in loads.values())
fig, axes = plt.subplots(len(moe_runs), L, figsize=(3.2 * L + 1, 2.3 * len(moe_runs)), squeeze=False)
for row, (name, load) in enumerate(loads.items()):
    iters = moe_runs[name]["history"].iters
    for layer in range(L):
        ax = axes[row, layer]
        im = ax.imshow(load[:, layer].T, aspect="auto", cmap="magma", vmin=0, vmax=vmax,
                       extent=(iters[0], iters[-1], n_exp - 0.5, -0.5))
        ax.set_title(f"{name}\nlayer {layer}", fontsize=9)
        ax.set_ylabel("expert" if layer == 0 else "")
        ax.set_xlabel("iteration" if row == len(moe_runs) - 1 else "")
fig.colorbar(im, ax=axes, label="share of assignments × E (1 = uniform)")
plt.show()

# %% tags=["nbval-ignore-output"]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
for name, r in moe_runs.items():
    ax1.plot(r["history"].iters, [e["max_load_ratio"] for e in r["history"].extra], "o-", ms=3, label=name)
ax1.axhline(2.0, color="grey", ls=":", label="2× uniform")
ax1.set(xlabel="iteration", ylabel="busiest expert's share × E", title="Busiest expert (worst layer) over training")
ax1.legend(fontsize=8)
width = 0.27
for j, (name, load) in enumerate(loads.items()):
    final = load[-1]                                          # (L, E)
    layer = int(final.max(dim=1).values.argmax())             # the layer with the busiest expert
    ax2.bar([e + (j - 1) * width for e in range(n_exp)], final[layer], width, label=f"{name} (layer {layer})")
ax2.axhline(1.0, color="grey", ls=":")
ax2.set(xlabel="expert", ylabel="share × E", title="Load at the end of training")
ax2.legend(fontsize=8)
plt.tight_layout()
plt.show()

final_ratio = {name: r["history"].extra[-1]["max_load_ratio"] for name, r in moe_runs.items()}
final_dropped = {name: r["history"].extra[-1]["dropped_fraction"] for name, r in moe_runs.items()}
for name in moe_runs:
    print(f"{name:28s} busiest expert {final_ratio[name]:.2f}× uniform, "
          f"{final_dropped[name]:.1%} of assignments dropped at capacity 1.25")
glue("ch02_ratio_bal", f"{final_ratio['MoE, balanced']:.2f}", display=False)
glue("ch02_ratio_nobal", f"{final_ratio['MoE, no balancing']:.2f}", display=False)
glue("ch02_ratio_nonoise", f"{final_ratio['MoE, no balancing, no noise']:.2f}", display=False)
glue("ch02_drop_bal", f"{final_dropped['MoE, balanced']:.1%}", display=False)
glue("ch02_drop_nobal", f"{final_dropped['MoE, no balancing']:.1%}", display=False)
glue("ch02_drop_nonoise", f"{final_dropped['MoE, no balancing, no noise']:.1%}", display=False)
# The bar: with the balancing loss the busiest expert stays below twice its fair share ...
assert final_ratio["MoE, balanced"] < 2.0
# ... and without it, load concentrates: the busiest expert is busier than with the loss.
for name in ("MoE, no balancing", "MoE, no balancing, no noise"):
    assert final_ratio[name] > final_ratio["MoE, balanced"]

# %% [markdown]
# With the balancing loss the busiest expert ends at **{glue:text}`ch02_ratio_bal`×** the uniform share, and
# {glue:text}`ch02_drop_bal` of assignments overflow a capacity of 1.25. Without it the busiest expert ends at
# **{glue:text}`ch02_ratio_nobal`×** (with router noise) and **{glue:text}`ch02_ratio_nonoise`×** (without noise),
# dropping {glue:text}`ch02_drop_nobal` and {glue:text}`ch02_drop_nonoise` of assignments at that capacity: a token that an overloaded
# expert cannot take skips that expert, and if both its experts are full it skips the layer's MLP entirely. The noise alone does not balance the load — it explores, but
# nothing rewards spreading — while the balancing loss pushes probability away from busy experts at every step.
#
# ### makeMoE's evaluation noise
#
# Now the bug. Turn `eval_noise` on for the balanced model — makeMoE's behaviour — and evaluate the same
# validation batches five times:

# %% tags=["nbval-ignore-output"]
model = balanced["model"]
xv, yv = get_batch(splits.val, moe_cfg.block_size, 256, torch.Generator().manual_seed(2), ctx.device)
model.eval()

def eval_losses(repeats=5):
    with torch.no_grad():
        return torch.tensor([model(xv, yv)[1].item() for _ in range(repeats)])

def routing():
    with torch.no_grad():
        flat = model.blocks[0].ln_2(model.wte(xv) + model.wpe(torch.arange(xv.size(1), device=ctx.device)))
        return model.blocks[0].moe.router(flat.reshape(-1, moe_cfg.n_embd)).expert_idx

clean, clean_idx = eval_losses(), routing()
for layer in model.moe_layers:
    layer.router.eval_noise = True
noisy, noisy_idx = eval_losses(), routing()
for layer in model.moe_layers:
    layer.router.eval_noise = False
changed = (noisy_idx != clean_idx).any(-1).float().mean().item()
print(f"noise off (ours):    5 evaluations: {clean.tolist()}")
print(f"noise on (makeMoE):  5 evaluations: {[round(v, 4) for v in noisy.tolist()]}")
print(f"mean loss {clean.mean():.4f} vs {noisy.mean():.4f}; with noise, {changed:.0%} of tokens "
      f"change their experts in the first layer")
assert clean.std() == 0 and noisy.std() > 0
glue("ch02_noise_std", f"{noisy.std():.4f}", display=False)
glue("ch02_noise_changed", f"{changed:.0%}", display=False)
glue("ch02_noise_cost", f"{noisy.mean() - clean.mean():+.4f}", display=False)

# %% [markdown]
# Without noise the five evaluations are identical. With makeMoE's noise they scatter (standard deviation
# {glue:text}`ch02_noise_std` nats), {glue:text}`ch02_noise_changed` of tokens change experts in the first layer, and
# the mean loss moves by {glue:text}`ch02_noise_cost` nats. A reported validation loss should not depend on a random
# draw, and generated text should not depend on one beyond the sampling we asked for; the fix is one condition,
# `if self.training`.
#
# ### Capacity: how many tokens would be dropped?
#
# With the trained routers we can ask what each capacity factor would cost, without retraining: route the probe batch
# at capacity factors from 0.5 to 2 and count the dropped assignments.

# %% tags=["nbval-ignore-output"]
from minillm.moe.monitoring import expert_load

factors = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
fig, ax = plt.subplots(figsize=(7, 3.8))
drops = {}
for name, r in moe_runs.items():
    drops[name] = []
    for f in factors:
        for layer in r["model"].moe_layers:
            layer.capacity_factor = f
        drops[name].append(float(expert_load(r["model"], x_probe)["dropped"].mean()))
    for layer in r["model"].moe_layers:
        layer.capacity_factor = moe_cfg.capacity_factor
    ax.plot(factors, [100 * d for d in drops[name]], "o-", label=name)
ax.set(xlabel="capacity factor", ylabel="assignments dropped (%)", title="Token dropping vs expert capacity")
ax.legend()
plt.show()
assert all(a >= b for d in drops.values() for a, b in zip(d, d[1:])), "more capacity never drops more"
assert drops["MoE, balanced"][factors.index(1.0)] < drops["MoE, no balancing, no noise"][factors.index(1.0)]
glue("ch02_drop_cf1_bal", f"{drops['MoE, balanced'][factors.index(1.0)]:.1%}", display=False)
glue("ch02_drop_cf1_nonoise", f"{drops['MoE, no balancing, no noise'][factors.index(1.0)]:.1%}", display=False)

# %% [markdown]
# At capacity factor 1 (exactly the uniform share) the balanced model drops {glue:text}`ch02_drop_cf1_bal` of its
# assignments, the unbalanced one without noise {glue:text}`ch02_drop_cf1_nonoise`. Capacity is a memory and speed
# guarantee bought with dropped tokens; balancing is what makes the price small.
#
# ## 8. Measure: dispatch speed
#
# `benchmarks/ch02_moe_dispatch.py` times each dispatch strategy for one `SparseMoE` layer of this profile's size
# (8 experts, top-2), from decoding steps (8 and 64 tokens) to training batches. It times the **dispatch alone** (on
# fixed routing) and the **whole layer** (router, dispatch and statistics), each in inference and in training
# (forward + backward). Before timing it checks that all four produce the same output within $10^{-5}$. It runs the
# variants interleaved and reports the fastest of 100 rounds, to resist other processes' load. This section only reads
# its JSON; regenerate it with `python benchmarks/ch02_moe_dispatch.py`.

# %% tags=["nbval-ignore-output"]
from minillm.core.bench import read_results, results_path

bench = read_results(results_path("ch02_moe_dispatch", ctx.profile.name, ctx.device), "python benchmarks/ch02_moe_dispatch.py")
assert bench["profile"] == ctx.profile.name
print(f"measured on {bench['machine']['device_name']} ({bench['machine']['torch_threads']} threads), {bench['created']}")
counts = list(bench["by_tokens"])
names = ["masked_loop", "sorted", "batched", "dense"]
titles = {"dispatch": "dispatch alone, inference", "dispatch_train": "dispatch alone, forward + backward",
          "forward": "whole layer, inference", "train": "whole layer, forward + backward"}
fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True)
for ax, (mode, title) in zip(axes.flat, titles.items()):
    for j, v in enumerate(names):
        ax.bar([i + (j - 1.5) * 0.2 for i in range(len(counts))],
               [bench["by_tokens"][n][mode][v]["tokens_per_s"] / 1e3 if v in bench["by_tokens"][n][mode] else 0
                for n in counts], 0.2, label=v)
    ax.set_xticks(range(len(counts)), [f"N={n}" for n in counts])
    ax.set_yscale("log")
    ax.set(ylabel="thousand tokens / s (log)", title=title)
axes[0, 0].legend(fontsize=8)
fig.suptitle(f"One SparseMoE layer, C={bench['config']['n_embd']}, 8 experts, top-2 — {bench['machine']['device_name']}")
plt.tight_layout()
plt.show()
print("batched / masked loop, tokens per second:")
for n in counts:
    row = bench["by_tokens"][n]
    assert max(row["max_abs_diff_vs_masked_loop"].values()) <= bench["tolerance"]
    ratios = "  ".join(f"{mode} {row[mode]['speedup_vs_masked_loop']['batched']:.2f}×" for mode in titles)
    print(f"  N={n:>5}: {ratios};  sorted (layer, inference) {row['forward']['speedup_vs_masked_loop']['sorted']:.2f}×;  "
          f"max |Δ| {max(row['max_abs_diff_vs_masked_loop'].values()):.1e}")
head = bench["headline"]
small, large = counts[0], counts[-1]
fast = head["batched_speedup_vs_masked_loop"]
glue("ch02_bench_device", bench["machine"]["device_name"], display=False)
glue("ch02_bench_small", small, display=False)
glue("ch02_bench_large", large, display=False)
for mode in titles:
    glue(f"ch02_speedup_small_{mode}", f"{fast[small][mode]:.2f}", display=False)
    glue(f"ch02_speedup_large_{mode}", f"{fast[large][mode]:.2f}", display=False)
glue("ch02_speedup_sorted_small", f"{bench['by_tokens'][small]['forward']['speedup_vs_masked_loop']['sorted']:.2f}",
     display=False)
glue("ch02_bar_dispatch_tokens", " and ".join(map(str, head["dispatch_bar_met_at_tokens"])) or "no size", display=False)

# %% [markdown]
# On {glue:text}`ch02_bench_device`, for a decoding step of {glue:text}`ch02_bench_small` tokens the batched dispatch
# runs at **{glue:text}`ch02_speedup_small_dispatch`×** the masked loop's tokens per second (the dispatch alone, in
# inference) and **{glue:text}`ch02_speedup_small_dispatch_train`×** with the backward pass; the whole layer, whose
# router and statistics cost the same under every strategy, gains {glue:text}`ch02_speedup_small_forward`× in
# inference and {glue:text}`ch02_speedup_small_train`× in training. The dispatch alone reaches 3× at
# {glue:text}`ch02_bar_dispatch_tokens` tokens. The sorted dispatch, still a loop over experts, reaches
# {glue:text}`ch02_speedup_sorted_small`× for the layer at that size.
#
# At {glue:text}`ch02_bench_large` tokens the advantage shrinks to {glue:text}`ch02_speedup_large_dispatch`× (dispatch)
# and {glue:text}`ch02_speedup_large_train`× (layer, training). All strategies do the same useful arithmetic, so what
# the fast paths save is overhead: per-expert masks, `nonzero` calls and masked scatters, per-expert full-size
# gradient buffers in the backward pass, and — for the batched path — the Python loop itself. Overhead is a fixed
# cost per call, so it dominates when the experts' matrix products are small (decoding) and fades when they are
# large, where the padding of the batched path starts to cost. On a GPU every small operation is a kernel launch, so
# the overhead matters more still, and production kernels replace the padded batch by a grouped matrix
# multiplication over variable-sized groups {cite}`gale2023megablocks`. The dense reference, with $E/k = 4$ times
# the arithmetic, is only competitive when the batch is so small that overhead is all there is.
#
#

# %% [markdown]
# ## Summary
#
# * A sparse MoE layer is a router plus $E$ MLPs; top-$k$ routing makes each token pay for $k$ of them. makeMoE's
#   architecture rebuilt here has exactly its {glue:text}`ch02_makemoe_params` parameters.
# * At equal active parameters and {glue:text}`ch02_iters` iterations, the MoE's validation loss ended
#   {glue:text}`ch02_val_gap_abs` nats {glue:text}`ch02_verdict` the dense GPT's: more parameters, but each expert
#   sees only a fraction of the tokens, and routing costs time on a CPU.
# * Without a balancing loss the router concentrates tokens on a few experts — noise does not prevent it — and
#   capacity limits then drop tokens; the Switch loss keeps the busiest expert below twice its fair share.
# * Router noise belongs to training only: makeMoE's evaluation noise makes its validation loss a random variable.
# * Sorting assignments by expert computes exactly what the dense reference computes (values and gradients), with one
#   call per expert and no masks; stacking the experts' weights and giving each assignment a slot removes the loop
#   over experts altogether — one batched product for all of them, fastest where overhead dominates (decoding).
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
