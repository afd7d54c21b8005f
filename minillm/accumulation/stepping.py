"""When the optimizer steps: the correct rule, and the two rules of the reference scripts, as data.

A loop over micro-batches ``i = 0, 1, …, n-1`` with accumulation ``k`` must step after micro-batch ``i`` when

    (i + 1) % k == 0   or   i == n - 1,

so every step sums exactly ``k`` micro-batches and a short tail still updates the model (:func:`should_step`,
:func:`grouped`). The reference experiment's scripts test ``if not batch_idx % k`` instead, in two variants:

* ``"reference"`` — ``backward(); if not i % k: step(); zero_grad()`` (``2_batchsize-8.py`` and Lightning
  Fabric's documentation): the first step uses micro-batch 0 alone, every later one micro-batches
  ``i-k+1 … i``, and the ``n - 1 - k⌊(n-1)/k⌋`` micro-batches after the last multiple of ``k`` never reach an
  update (with several epochs they stay in ``.grad`` and join the next epoch's first step);
* ``"reference_zero_first"`` — ``if not i % k: zero_grad()`` *before* ``backward()`` and ``step()`` after it
  (``2_batchsize-16.py``): each step sees the gradient of micro-batch ``i`` only, and the other ``k-1`` of every
  ``k`` are computed and thrown away.

Both scale every micro-batch's loss by ``1/k`` whatever the size of the group it ends up in.
:func:`step_groups` turns any of the rules into the list of micro-batches each update really uses, so a loop
that feeds those groups to one optimizer step per group reproduces the reference's updates exactly (a test runs
the reference loop as written and compares the weights).

Defined in chapter 4 (gradient accumulation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")

#: ``"every_k"`` is correct; the other two are the reference scripts' rules, kept to measure what they do.
STEP_RULES = ("every_k", "reference", "reference_zero_first")


def _check_k(accumulation_steps: int) -> None:
    if not isinstance(accumulation_steps, int) or isinstance(accumulation_steps, bool) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}; "
                         "use 1 for no accumulation")


def _check_rule(rule: str) -> None:
    if rule not in STEP_RULES:
        raise ValueError(f"unknown stepping rule {rule!r}; choose one of {STEP_RULES} "
                         "('every_k' is the correct one)")


def should_step(i: int, accumulation_steps: int, num_micro_batches: int) -> bool:
    """True when the optimizer steps after micro-batch ``i`` (0-based): every ``k``-th one, and the last."""
    _check_k(accumulation_steps)
    if not 0 <= i < num_micro_batches:
        raise ValueError(f"micro-batch index {i} is outside [0, {num_micro_batches}): "
                         "pass the 0-based index of a micro-batch of this epoch")
    return (i + 1) % accumulation_steps == 0 or i + 1 == num_micro_batches


def grouped(micro_batches: Iterable[T], accumulation_steps: int) -> Iterator[list[T]]:
    """Yield the micro-batches of each optimizer step: lists of ``k``, the last one possibly shorter.

    The group boundaries are exactly the indices where :func:`should_step` is true.
    """
    return step_groups(micro_batches, accumulation_steps, "every_k")


def step_groups(micro_batches: Iterable[T], accumulation_steps: int, rule: str = "every_k",
                epochs: int = 1) -> Iterator[list[T]]:
    """Yield, per optimizer step, the micro-batches whose gradients that step applies under ``rule``.

    ``micro_batches`` is one epoch (iterated ``epochs`` times, the index restarting at 0 each time, as
    ``enumerate(loader)`` does). Micro-batches whose gradient no step uses are not yielded at all.
    """
    _check_k(accumulation_steps)
    _check_rule(rule)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    return _step_groups(micro_batches, accumulation_steps, rule, epochs)  # checked now, iterated lazily


def _step_groups(micro_batches: Iterable[T], k: int, rule: str, epochs: int) -> Iterator[list[T]]:
    pending: list[T] = []  # what .grad holds
    for _ in range(epochs):
        if rule == "every_k":
            pending = []  # the correct loop steps at each epoch's last micro-batch, so nothing carries over
        for i, batch in enumerate(micro_batches):
            if rule == "every_k":
                pending.append(batch)
                if len(pending) == k:
                    yield pending
                    pending = []
            elif rule == "reference":        # backward; if not i % k: step; zero_grad
                pending.append(batch)
                if i % k == 0:
                    yield pending
                    pending = []
            else:                            # if not i % k: zero_grad; backward; if not i % k: step
                if i % k == 0:
                    yield [batch]
        if rule == "every_k" and pending:
            yield pending                    # the tail: a short group, normalised by its own size
            pending = []
    # "reference": whatever is still pending was back-propagated but never applied.


@dataclass(frozen=True)
class StepPlan:
    """Which micro-batch indices each optimizer step applies, and which ones no step ever applies."""

    groups: list[list[int]]
    unused: list[int]

    @property
    def steps(self) -> int:
        return len(self.groups)

    @property
    def group_sizes(self) -> list[int]:
        return [len(g) for g in self.groups]


def step_plan(num_micro_batches: int, accumulation_steps: int, rule: str = "every_k") -> StepPlan:
    """:func:`step_groups` over the indices ``0 … n-1`` of one epoch, with the indices left unused."""
    if not isinstance(num_micro_batches, int) or num_micro_batches < 0:
        raise ValueError(f"num_micro_batches must be an integer >= 0, got {num_micro_batches!r}")
    groups = list(step_groups(range(num_micro_batches), accumulation_steps, rule))
    used = {i for g in groups for i in g}
    return StepPlan(groups, [i for i in range(num_micro_batches) if i not in used])

