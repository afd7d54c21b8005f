"""Plausible wrong answers to chapter 4's exercises: CI requires each exercise's check to reject every one.

Keys are exercise numbers; each value maps a description of the mistake to the code a learner would write in
place of the solution region (a tuple when the exercise cell has several regions; None keeps that region's answer).
"""

WRONG_ANSWERS = {
    1: {  # when the optimizer steps
        "drops the tail: steps only on (i + 1) % k == 0":
            "return [i for i in range(n) if (i + 1) % k == 0]",
        "the reference scripts' rule: steps on i % k == 0":
            "return [i for i in range(n) if i % k == 0]",
        "appends the last index even when it already steps there":
            "return list(range(k - 1, n, k)) + [n - 1]",
    },
    2: {  # accumulating a library's mean loss
        "mean of means: each micro-batch's mean divided by the number of micro-batches": """
total_loss = 0.0
for batch in micro_batches:
    loss = model(**batch).loss / len(micro_batches)
    loss.backward()
    total_loss += loss.item()
return total_loss
""",
        "no scaling at all: the sum of the micro-batch means": """
total_loss = 0.0
for batch in micro_batches:
    loss = model(**batch).loss
    loss.backward()
    total_loss += loss.item()
return total_loss
""",
        "right gradient, but reports the mean of the scaled losses": """
total = sum(len(b["labels"]) for b in micro_batches)
step_loss = 0.0
for batch in micro_batches:
    loss = model(**batch).loss * len(batch["labels"]) / total
    loss.backward()
    step_loss += loss.item()
return step_loss / len(micro_batches)
""",
    },
    3: {  # per-token weights
        "mean of means without the 1/k": ("""
if mean_of_means:
    return [1 / n for n in counts]
return [1 / sum(counts)] * len(counts)
""", None),
        "correct rule weighs each micro-batch, not each token, equally": ("""
if mean_of_means:
    return [1 / (len(counts) * n) for n in counts]
return [1 / len(counts)] * len(counts)
""", None),
        "overweight as smallest over largest": (None, """
bug = token_weights(counts, mean_of_means=True)
overweight = min(bug) / max(bug)
"""),
    },
    4: {  # paired interval over seeds
        "unpaired: the interval of the difference of two independent means": ("""
x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
half = student_t.ppf(0.975, x.size - 1) * math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
return float(x.mean() - y.mean() - half), float(x.mean() - y.mean() + half)
""", None),
        "normal quantile 1.96 instead of Student's t with n - 1 degrees of freedom": ("""
d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
return float(d.mean() - half), float(d.mean() + half)
""", None),
        "population standard deviation (ddof=0)": ("""
d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
half = student_t.ppf(0.975, d.size - 1) * d.std() / math.sqrt(d.size)
return float(d.mean() - half), float(d.mean() + half)
""", None),
        "the overlap heuristic: differs only when the two schemes' intervals do not overlap": (None, """
from minillm.core.claims import mean_ci

ci_a, ci_b = mean_ci(a), mean_ci(b)
return ci_a.low > ci_b.high or ci_b.low > ci_a.high
"""),
        "one-sided: only a gain counts as a difference": (None, """
low, high = paired_interval(a, b)
return low > 0
"""),
    },
    5: {  # a rank's loss under DDP
        "each rank's own mean (a mean of per-rank means)":
            "return summed / local_units",
        "global count without the world-size factor (DDP divides by W)":
            "return summed / global_units",
        "world-size factor with the rank's own count":
            "return summed * world_size / local_units",
    },
}
