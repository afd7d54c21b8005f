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
# # Chapter 3 exercises: LoRA
#
# Fill in each code cell where it says `YOUR CODE HERE`, then run the check cell below it: the checks compare your
# code with `minillm` and with PyTorch. The chapter is `book/ch03_lora.ipynb`; worked answers are in
# `solutions/ch03_lora.ipynb`.

# %% tags=["nbval-ignore-output"]
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.core.notebook import chapter_setup
import tqdm.auto  # noqa: F401  (imported here so its one-time notebook warning lands in this ignored cell)
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # no "Loading weights" bars in the outputs

ctx = chapter_setup("Chapter 3 exercises", minutes_tiny=0.5, minutes_full=0.5)


# %% [markdown]
# ## Exercise 1: count LoRA's parameters
#
# A rank-$r$ adapter on a linear layer $d_{in} \to d_{out}$ has $r(d_{in} + d_{out})$ parameters. Write
# `lora_param_count(model, r, skip=("classifier",))` that returns how many parameters LoRA adds when it adapts every
# `nn.Linear` of `model` whose name's last part is not in `skip`. Then use it to say how many parameters rank 4, 8 and
# 64 add to the chapter's MiniLM encoder.

# %%
def lora_param_count(model: nn.Module, r: int, skip=("classifier",)) -> int:
    # BEGIN SOLUTION
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name.split(".")[-1] not in skip)
    # END SOLUTION


# %%
from minillm.lora import LoRAConfig
from minillm.lora import inject_lora, trainable_report
from minillm.pretrained import load_minilm_classifier

toy = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
assert lora_param_count(toy, 2) == 2 * (10 + 20) + 2 * (20 + 5)

minilm, _ = load_minilm_classifier(seed=0)
for r in (4, 8, 64):
    model = copy.deepcopy(minilm)
    inject_lora(model, LoRAConfig(r=r, alpha=2 * r, modules_to_save=()))
    assert lora_param_count(minilm, r) == trainable_report(model).trainable, f"wrong count for r={r}"
    print(f"r={r:3d}: {lora_param_count(minilm, r):9,d} LoRA parameters "
          f"({100 * lora_param_count(minilm, r) / trainable_report(minilm).total:.2f}% of the encoder)")
print("Exercise 1: correct")

# %% [markdown]
# ## Exercise 2: export a merged layer
#
# For deployment you want plain `nn.Linear` layers with the update folded in, so the model needs no LoRA code at all.
# Write `export_merged(layer)` that takes a `minillm.lora.LoRALinear` (with its active adapter) and returns a **new**
# `nn.Linear` whose weight is $W_0 + \frac{\alpha}{r} B A$ and whose bias is the base layer's bias. The LoRA layer
# must be left unchanged.

# %%
from minillm.lora import LoRALinear


def export_merged(layer: LoRALinear) -> nn.Linear:
    # BEGIN SOLUTION
    name = layer.active_adapter
    A, B = layer.lora_A[name].weight, layer.lora_B[name].weight       # (r, d_in), (d_out, r)
    base = layer.base_layer
    out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
    with torch.no_grad():
        out.weight.copy_(base.weight + layer.scaling[name] * (B @ A))
        if base.bias is not None:
            out.bias.copy_(base.bias)
    return out
    # END SOLUTION


# %%
torch.manual_seed(0)
layer = LoRALinear(nn.Linear(48, 32))
layer.add_adapter("default", LoRAConfig(r=4, alpha=12))
with torch.no_grad():
    layer.lora_B["default"].weight.normal_()
layer.eval()
w_before = layer.base_layer.weight.clone()
plain = export_merged(layer)
assert type(plain) is nn.Linear, "return a plain nn.Linear"
x = torch.randn(6, 48)
assert (plain(x) - layer(x)).abs().max() < 1e-5
assert torch.equal(layer.base_layer.weight, w_before), "the LoRA layer must not change"
no_bias = LoRALinear(nn.Linear(8, 8, bias=False))
no_bias.add_adapter("default", LoRAConfig(r=2))
assert export_merged(no_bias).bias is None
print("Exercise 2: correct")


# %% [markdown]
# ## Exercise 3: the embedding adapter's forward pass
#
# For an `nn.Embedding` with table $E \in \mathbb{R}^{V \times d}$, LoRA learns $A \in \mathbb{R}^{r \times V}$ and
# $B \in \mathbb{R}^{d \times r}$ and the table becomes $E + \frac{\alpha}{r}(BA)^\top$. Building the $V \times d$ update
# to look up a few rows would waste memory. Write `lora_embedding_forward(ids, E, A, B, scaling)` that looks up rows
# of $A^\top$ (use `F.embedding`) and multiplies only those by $B^\top$. Why does LoRA initialise $A = 0$ and $B$
# randomly here, the reverse of the linear layer? (Think about which gradient would be zero.)

# %%
def lora_embedding_forward(ids, E, A, B, scaling):
    # ids: (..., T) int, E: (V, d), A: (r, V), B: (d, r)
    # BEGIN SOLUTION
    after_a = F.embedding(ids, A.T)                     # (..., T, r): row ids of Aᵀ
    return F.embedding(ids, E) + scaling * after_a @ B.T
    # END SOLUTION


# %%
from minillm.lora import LoRAEmbedding

torch.manual_seed(0)
emb = LoRAEmbedding(nn.Embedding(100, 16))
emb.add_adapter("default", LoRAConfig(r=4, alpha=8))
with torch.no_grad():
    emb.lora_embedding_A["default"].normal_()
ids = torch.randint(0, 100, (3, 7))
A, B = emb.lora_embedding_A["default"], emb.lora_embedding_B["default"]
ours = lora_embedding_forward(ids, emb.base_layer.weight, A, B, 2.0)
assert ours.shape == (3, 7, 16)
assert (ours - emb(ids)).abs().max() < 1e-5
print("Exercise 3: correct")


# %% [markdown] tags=["solution-only"]
# *Answer to the question.* The gradient of the update with respect to one factor is proportional to the other
# factor. With a lookup, the rows of $A^\top$ that are read are the trainable "embedding" of each token; starting
# them at zero and $B$ random gives $B$ zero gradient at step 0 but $A$ a non-zero one, so training can start —
# the mirror image of the linear layer, where $B = 0$ and $A$ random.

# %% [markdown]
# ## Exercise 4: how much memory does training keep alive?
#
# With AdamW in float32, every parameter costs 4 bytes for the weight, and every *trainable* one another 4 for its
# gradient and 8 for the two moments. Write `training_state_mib(n_total, n_trainable, bytes_per_value=4)` returning
# that in MiB. Check it against `minillm.core.memory.training_state_bytes` on the chapter's model, then use it for a
# 7-billion-parameter model: full fine-tuning versus LoRA with 0.1% of the parameters trainable.

# %%
def training_state_mib(n_total: int, n_trainable: int, bytes_per_value: int = 4) -> float:
    # BEGIN SOLUTION
    return (n_total + 3 * n_trainable) * bytes_per_value / 2**20
    # END SOLUTION


# %%
from minillm.core.memory import training_state_bytes

for use_lora in (False, True):
    model = copy.deepcopy(minilm)
    if use_lora:
        inject_lora(model, LoRAConfig(r=8, alpha=16))
    rep = trainable_report(model)
    assert abs(training_state_mib(rep.total, rep.trainable) - training_state_bytes(model).total / 2**20) < 1e-6
n = 7_000_000_000
full_gib, lora_gib = training_state_mib(n, n) / 1024, training_state_mib(n, n // 1000) / 1024
print(f"7B model: full fine-tuning {full_gib:.0f} GiB, LoRA {lora_gib:.1f} GiB (before activations)")
assert 104 < full_gib < 105 and 26 < lora_gib < 26.2
print("Exercise 4: correct")


# %% [markdown]
# ## Exercise 5: the best rank-$r$ update
#
# The LoRA paper's hypothesis {cite}`hu2022lora` is that fine-tuning updates have low intrinsic rank. Given any update $\Delta W$, the best
# rank-$r$ approximation in the Frobenius norm comes from its singular value decomposition
# $\Delta W = U \Sigma V^\top$ (Eckart–Young): keep the $r$ largest singular values. Write `best_low_rank(delta, r)`
# returning factors `B` of shape $(d_{out}, r)$ and `A` of shape $(r, d_{in})$ with $BA$ that best approximation
# (split $\Sigma$ evenly: $B = U_r \Sigma_r^{1/2}$, $A = \Sigma_r^{1/2} V_r^\top$). The check builds an update that is
# rank 4 plus a little noise and measures how much of it rank 1, 4 and 16 capture.

# %%
def best_low_rank(delta: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    # BEGIN SOLUTION
    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    root = S[:r].sqrt()
    return U[:, :r] * root, root[:, None] * Vh[:r]
    # END SOLUTION


# %%
g = torch.Generator().manual_seed(0)
signal = torch.randn(384, 4, generator=g) @ torch.randn(4, 1536, generator=g) / 40   # a rank-4 update
delta = signal + 0.01 * torch.randn(384, 1536, generator=g)
S = torch.linalg.svdvals(delta)
for r in (1, 4, 16):
    B, A = best_low_rank(delta, r)
    assert B.shape == (384, r) and A.shape == (r, 1536)
    err = torch.linalg.norm(delta - B @ A)
    assert abs(err - S[r:].square().sum().sqrt()) < 1e-3 * S[0], "not the best rank-r approximation"
    print(f"rank {r:2d}: captures {100 * (1 - err.square() / S.square().sum()):.1f}% of the update's energy")
print("Exercise 5: correct")


# %% [markdown]
# ## Exercise 6: one batch, a different adapter per row
#
# A server that keeps one base model and many task adapters receives batches that mix tasks. Write
# `mixed_lora_forward(x, base, adapters, rows)`: `x` has shape $(B, T, d_{in})$, `base` is the frozen `nn.Linear`,
# `adapters` maps a name to `(A, B, scaling)`, and `rows` gives one adapter name per row of the batch (`"__base__"`
# for a row that should see the base model only). Row $i$ must come out as $W_0 x_i + s_a B_a A_a x_i$ for its own
# adapter $a$. Run each adapter once, on its own rows only. The check compares with `minillm.lora.adapter_per_row`.

# %%
def mixed_lora_forward(x, base, adapters, rows):
    # BEGIN SOLUTION
    out = base(x)                                                    # (B, T, d_out)
    for name, (A, B, scaling) in adapters.items():
        idx = [i for i, row in enumerate(rows) if row == name]
        if idx:
            out[idx] = out[idx] + scaling * (x[idx] @ A.T @ B.T)
    return out
    # END SOLUTION


# %%
from minillm.lora import BASE_ROW, adapter_per_row

torch.manual_seed(0)
served = nn.Sequential(nn.Linear(16, 12))
inject_lora(served, LoRAConfig(r=4, alpha=8, modules_to_save=()), "a")
inject_lora(served, LoRAConfig(r=2, alpha=6, modules_to_save=()), "b")
with torch.no_grad():
    for name, p in served.named_parameters():
        if "lora_" in name:
            p.normal_(std=0.5)
layer = served[0]
adapters = {n: (layer.lora_A[n].weight, layer.lora_B[n].weight, layer.scaling[n]) for n in ("a", "b")}
x = torch.randn(5, 3, 16)
rows = ["b", BASE_ROW, "a", "b", "a"]
with torch.no_grad():
    ours = mixed_lora_forward(x, layer.base_layer, adapters, rows)
    with adapter_per_row(served, rows):
        expected = served(x)
assert ours.shape == (5, 3, 12)
assert (ours[1] - layer.base_layer(x[1])).abs().max() < 1e-6, "a '__base__' row must get no update"
assert (ours - expected).abs().max() < 1e-5, "each row must use its own adapter"
print("Exercise 6: correct")

