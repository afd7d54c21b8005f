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
# # Chapter 4 exercises: gradient accumulation
#
# Fill in each code cell where it says `YOUR CODE HERE`, then run the check cell below it: the checks compare your
# code with `minillm`, with full-batch gradients and with the chapter's study. The chapter is
# `book/ch04_grad_accumulation.ipynb`; worked answers are in `solutions/ch04_grad_accumulation.ipynb`.

# %% tags=["nbval-ignore-output"]
import math

import torch
import torch.nn.functional as F

import minillm.accumulation.experiment  # noqa: F401  (imports tqdm.auto, whose notebook warning belongs in this ignored cell)
from minillm.core.notebook import chapter_setup

ctx = chapter_setup("Chapter 4 exercises", minutes_tiny=0.5, minutes_full=0.5)


# %% [markdown]
# ## Exercise 1: when does the optimizer step?
#
# The reference scripts step with `if not batch_idx % k: optimizer.step()`. That steps after the *first* micro-batch
# (an update from one micro-batch) and, when the number of micro-batches is not one more than a multiple of $k$,
# never applies the tail's gradients. Write `step_indices(n, k)`: the sorted 0-based indices of the micro-batches
# after which a correct loop steps, for `n` micro-batches and accumulation `k`.

# %%
def step_indices(n: int, k: int) -> list[int]:
    # BEGIN SOLUTION
    return [i for i in range(n) if (i + 1) % k == 0 or i == n - 1]
    # END SOLUTION


# %%
from minillm.accumulation import grouped, should_step, step_plan

assert step_indices(10, 4) == [3, 7, 9]
assert step_indices(8, 4) == [3, 7], "one step per group of k: no step is repeated"
assert step_indices(3, 1) == [0, 1, 2]
assert step_indices(3, 16) == [2], "a run shorter than k must still step once"
for n in range(1, 20):
    for k in range(1, 7):
        assert step_indices(n, k) == [i for i in range(n) if should_step(i, k, n)]
        assert step_indices(n, k) == [g[-1] for g in grouped(range(n), k)]
        assert step_indices(n, k) != [g[-1] for g in step_plan(n, k, "reference").groups] or n == 1 or k == 1
print("ok")


# %% [markdown]
# ## Exercise 2: accumulate with a library's mean loss
#
# Hugging Face models return `outputs.loss`, the **mean** cross-entropy over the micro-batch. Write
# `accumulate_means(model, micro_batches)` that calls `model(**batch).loss` (no `reduction="sum"`), scales each
# micro-batch's mean correctly and calls `.backward()`, so that for micro-batches of **unequal** size the
# accumulated gradient equals the full batch's. Return the step's loss (the full-batch mean).

# %%
def accumulate_means(model, micro_batches) -> float:
    # BEGIN SOLUTION
    total = sum(len(b["labels"]) for b in micro_batches)
    step_loss = 0.0
    for batch in micro_batches:
        loss = model(**batch).loss * len(batch["labels"]) / total     # mean * n_j / N = sum / N
        loss.backward()
        step_loss += loss.item()
    return step_loss
    # END SOLUTION


# %%
from minillm.pretrained import bloom_classifier

model = bloom_classifier(seed=0).eval()
g = torch.Generator().manual_seed(0)
ids = torch.randint(1, 500, (8, 12), generator=g)
mask = (torch.arange(12)[None] < torch.randint(3, 13, (8,), generator=g)[:, None]).long()
batch = {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, 2, (8,), generator=g)}
full_loss = model(**batch).loss
full_loss.backward()
full = [p.grad.clone() for p in model.parameters()]
model.zero_grad()
sizes = [(0, 5), (5, 7), (7, 8)]                                     # micro-batches of 5, 2 and 1
loss = accumulate_means(model, [{k: v[a:b] for k, v in batch.items()} for a, b in sizes])
worst = max((p.grad - f).abs().max().item() for p, f in zip(model.parameters(), full))
assert worst < 1e-6, f"accumulated gradient differs from the full batch's by {worst:.2e}"
assert abs(loss - full_loss.item()) < 1e-5, f"the step's loss {loss:.5f} is not the full batch's {full_loss.item():.5f}"
print("accumulated gradient equals the full batch's: max difference < 1e-6")

# %% [markdown]
# ## Exercise 3: how much does the mean of means overweight a token?
#
# Under the mean-of-means bug, a target token in micro-batch $j$ (of $k$, holding $n_j$ tokens) gets weight
# $1/(k\,n_j)$ in the loss instead of $1/N$. Write `token_weights(counts, mean_of_means)` returning a list with one
# weight per micro-batch (the weight of each of its tokens) under either rule, then use it on the token counts of a
# real batch: the sentences of `minillm.data.sentiment` tokenized by MiniLM's tokenizer, in micro-batches of 4.
# Put in `overweight` the ratio of the largest to the smallest per-token weight under the bug.

# %%
from minillm.pretrained import load_minilm_tokenizer
from minillm.data.sentiment import load_sentiment_splits

tokenizer = load_minilm_tokenizer()
texts = [ex.text for ex in load_sentiment_splits("sentences", seed=0).train[:32]]
lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=64)["input_ids"]]
counts = [sum(lengths[i:i + 4]) for i in range(0, 32, 4)]           # tokens per micro-batch of 4 sentences


def token_weights(counts: list[int], mean_of_means: bool) -> list[float]:
    # BEGIN SOLUTION
    if mean_of_means:
        return [1 / (len(counts) * n) for n in counts]
    return [1 / sum(counts)] * len(counts)
    # END SOLUTION


# BEGIN SOLUTION
bug = token_weights(counts, mean_of_means=True)
overweight = max(bug) / min(bug)
# END SOLUTION
print("tokens per micro-batch:", counts)
print(f"under the bug, a token of the shortest micro-batch weighs {overweight:.2f}x one of the longest")

# %%
for rule in (False, True):
    w = token_weights(counts, rule)
    assert len(w) == len(counts)
    assert abs(sum(wi * n for wi, n in zip(w, counts)) - 1.0) < 1e-12, "the weights of all tokens must sum to 1"
assert token_weights([3, 1], False) == [0.25, 0.25]
assert token_weights([3, 1], True) == [1 / 6, 1 / 2]
assert abs(overweight - max(counts) / min(counts)) < 1e-9
assert overweight > 1


# %% [markdown]
# ## Exercise 4: is an accuracy difference more than seed noise?
#
# The chapter's study ran every scheme on the same seeds; seed $s$ fixes the split, the new head and the order of
# the examples for every scheme alike. Two ways to compare schemes $a$ and $b$:
#
# * *overlap*: compute each scheme's 95 % interval over the seeds and call a difference real when the intervals do
#   not overlap;
# * *paired*: take the per-seed differences $d_s = a_s - b_s$ and compute **their** interval,
#   $\bar d \pm t_{0.975,\,n-1}\, s_d / \sqrt{n}$ (Student's $t$ with $n - 1$ degrees of freedom, $s_d$ the sample
#   standard deviation of the $d_s$).
#
# Write `paired_interval(a, b)` returning `(low, high)` of the paired 95 % interval (use
# `scipy.stats.t.ppf(0.975, n - 1)`), and `differs(a, b)`: whether that interval excludes 0. The cell then asks
# whether accumulation 16 differs from each batch-1 run of the study.

# %%
import numpy as np
from scipy.stats import t as student_t

from minillm.accumulation import BATCH1_TUNED, accuracies
from minillm.core.bench import read_results, results_path
from minillm.core.paths import project_root

study = read_results(results_path("ch04_accumulation_seeds", "tiny", "cpu", project_root() / "studies" / "results"),
                     ".venv/bin/python studies/ch04_accumulation_seeds.py")


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    # BEGIN SOLUTION
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    half = student_t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return float(d.mean() - half), float(d.mean() + half)
    # END SOLUTION


def differs(a: list[float], b: list[float]) -> bool:
    # BEGIN SOLUTION
    low, high = paired_interval(a, b)
    return low > 0 or high < 0
    # END SOLUTION


acc16 = accuracies(study, "accumulation 16")
for name in ("batch 1", BATCH1_TUNED):
    other = accuracies(study, name)
    seeds = sorted(set(acc16) & set(other))
    a, b = [acc16[s] for s in seeds], [other[s] for s in seeds]
    low, high = paired_interval(a, b)
    print(f"accumulation 16 - {name}: paired interval [{100 * low:+.1f}, {100 * high:+.1f}] points, "
          f"differs: {differs(a, b)}")

# %%
from minillm.core.claims import mean_ci

rng = np.random.default_rng(0)
for n in (3, 5, 8):
    a, b = rng.normal(0.8, 0.03, n), rng.normal(0.78, 0.03, n)
    ci = mean_ci(a - b)
    assert np.allclose(paired_interval(a, b), (ci.low, ci.high), atol=1e-9), "Student's t interval of a - b"
# Seeds move both schemes together: a small gain on every seed is real although the two intervals overlap.
base = np.array([0.70, 0.78, 0.74, 0.81, 0.76])
steady = base + 0.012 + np.array([0.002, -0.001, 0.001, -0.002, 0.0])
assert mean_ci(steady).low < mean_ci(base).high, "(the two schemes' own intervals overlap)"
assert differs(steady, base), "a gain of about 1.2 points on every seed is resolved by the paired interval"
assert differs(base, steady), "a loss on every seed is a difference too"
assert not differs(base + np.array([0.01, -0.01, 0.012, -0.012, 0.0]), base), "gains and losses that cancel"
for name in ("batch 1", BATCH1_TUNED):
    other = accuracies(study, name)
    seeds = sorted(set(acc16) & set(other))
    ci = mean_ci([acc16[s] - other[s] for s in seeds])
    assert differs([acc16[s] for s in seeds], [other[s] for s in seeds]) == (ci.low > 0 or ci.high < 0)


# %% [markdown]
# ## Exercise 5: a rank's loss under data parallelism
#
# With `DistributedDataParallel`, rank $r$ of $W$ back-propagates a loss and DDP replaces every rank's gradient by
# the **mean** over ranks. Rank $r$ holds `local_units` loss units of the step, all ranks together `global_units`.
# Write `rank_loss(summed, local_units, global_units, world_size)`: the loss rank $r$ must back-propagate, from its
# **summed** per-unit loss, so that the averaged gradient is the gradient of the whole step's mean loss. The check
# simulates DDP's mean over three ranks holding 5, 2 and 1 examples.

# %%
def rank_loss(summed: torch.Tensor, local_units: int, global_units: int, world_size: int) -> torch.Tensor:
    # BEGIN SOLUTION
    return summed * world_size / global_units
    # END SOLUTION


# %%
torch.manual_seed(0)
net = torch.nn.Linear(6, 3)
x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
F.cross_entropy(net(x), y).backward()                               # one process, the whole step's batch
full = [p.grad.clone() for p in net.parameters()]
shards = [(0, 5), (5, 7), (7, 8)]                                   # three ranks with 5, 2 and 1 examples
per_rank = []
for a, b in shards:
    net.zero_grad()
    summed = F.cross_entropy(net(x[a:b]), y[a:b], reduction="sum")
    rank_loss(summed, b - a, 8, len(shards)).backward()
    per_rank.append([p.grad.clone() for p in net.parameters()])
averaged = [sum(g[i] for g in per_rank) / len(shards) for i in range(len(full))]  # what DDP's all-reduce leaves
worst = max((g - f).abs().max().item() for g, f in zip(averaged, full))
assert worst < 1e-6, f"the DDP-averaged gradient differs from the full batch's by {worst:.2e}"
from minillm.accumulation import rank_loss_scale

assert abs(rank_loss(torch.tensor(2.0), 3, 40, 4).item() - 2.0 * rank_loss_scale(40, 4)) < 1e-7
print("the averaged gradient equals the full batch's: max difference < 1e-6")
