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
# code with `minillm` and with full-batch gradients. The chapter is `book/ch04_grad_accumulation.ipynb`; worked
# answers are in `solutions/ch04_grad_accumulation.ipynb`.

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
# A common loop steps with `if i % k == 0: optimizer.step()`. It steps after the *first* micro-batch (a step with
# 1 micro-batch of gradient) and, when the number of micro-batches is not a multiple of $k$, leaves the tail's
# gradients in `.grad`, where they leak into the next epoch's first step. Write `step_indices(n, k)`: the sorted
# 0-based indices of the micro-batches after which a correct loop steps, for `n` micro-batches and accumulation `k`.

# %%
def step_indices(n: int, k: int) -> list[int]:
    # BEGIN SOLUTION
    return [i for i in range(n) if (i + 1) % k == 0 or i == n - 1]
    # END SOLUTION


# %%
from minillm.accumulation import grouped, should_step

assert step_indices(10, 4) == [3, 7, 9]
assert step_indices(8, 4) == [3, 7]
assert step_indices(3, 1) == [0, 1, 2]
assert step_indices(3, 16) == [2], "a run shorter than k must still step once"
for n in range(1, 20):
    for k in range(1, 7):
        assert step_indices(n, k) == [i for i in range(n) if should_step(i, k, n)]
        assert step_indices(n, k) == [g[-1] for g in grouped(range(n), k)]
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
assert abs(loss - full_loss.item()) < 1e-5
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
    assert abs(sum(wi * n for wi, n in zip(w, counts)) - 1.0) < 1e-12, "weights must sum to 1"
assert token_weights([3, 1], False) == [0.25, 0.25]
assert token_weights([3, 1], True) == [1 / 6, 1 / 2]
assert abs(overweight - max(counts) / min(counts)) < 1e-9
assert overweight > 1


# %% [markdown]
# ## Exercise 4: is an accuracy difference noise?
#
# The chapter compares test accuracies measured on a few hundred sentences. With $n$ test examples and accuracy
# $p$, the number correct is (approximately) binomial, so the standard error of $\hat p$ is
# $\sqrt{\hat p(1-\hat p)/n}$. Write `accuracy_interval(correct, n, z=1.96)` returning the normal-approximation
# 95 % confidence interval `(low, high)` of the accuracy. Then decide: with 400 test sentences, is a difference
# between 0.80 and 0.83 outside both intervals?

# %%
def accuracy_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    # BEGIN SOLUTION
    p = correct / n
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half
    # END SOLUTION


# BEGIN SOLUTION
low_a, high_a = accuracy_interval(320, 400)
low_b, high_b = accuracy_interval(332, 400)
separated = high_a < low_b
# END SOLUTION
print(f"0.80 on 400: [{low_a:.3f}, {high_a:.3f}]   0.83 on 400: [{low_b:.3f}, {high_b:.3f}]   separated: {separated}")

# %%
lo, hi = accuracy_interval(80, 100)
assert abs((hi - lo) / 2 - 1.96 * math.sqrt(0.8 * 0.2 / 100)) < 1e-12 and abs((lo + hi) / 2 - 0.8) < 1e-12
# Coverage check by simulation: about 95 % of intervals from binomial draws contain the true accuracy.
g = torch.Generator().manual_seed(0)
draws = torch.binomial(torch.full((4000,), 400.0), torch.full((4000,), 0.8), generator=g)
covered = sum(accuracy_interval(int(c), 400)[0] <= 0.8 <= accuracy_interval(int(c), 400)[1] for c in draws)
assert 0.93 < covered / 4000 < 0.97, covered / 4000
assert separated is False, "three points on 400 sentences is within the noise"
