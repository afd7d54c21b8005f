"""The stepping rules as data reproduce the loops they describe, written out as the reference scripts write them."""

from __future__ import annotations

import pytest
import torch

from minillm.accumulation import STEP_RULES, grouped, should_step, step_groups, step_plan, train_accumulated
from minillm.pretrained import bloom_classifier


def test_correct_rule_steps_every_k_and_after_the_tail():
    plan = step_plan(10, 4)
    assert plan.groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and plan.unused == []
    assert [g[-1] for g in plan.groups] == [i for i in range(10) if should_step(i, 4, 10)]
    assert list(grouped(range(10), 4)) == plan.groups
    assert step_plan(3, 16).groups == [[0, 1, 2]]


def test_reference_rule_steps_after_micro_batch_zero_and_drops_the_tail():
    plan = step_plan(10, 4, "reference")
    assert plan.groups == [[0], [1, 2, 3, 4], [5, 6, 7, 8]] and plan.unused == [9]
    big = step_plan(1024, 16, "reference")
    assert big.steps == 64 and big.group_sizes[:2] == [1, 16] and big.unused == list(range(1009, 1024))


def test_zero_first_rule_applies_one_micro_batch_per_step():
    plan = step_plan(10, 4, "reference_zero_first")
    assert plan.groups == [[0], [4], [8]] and plan.unused == [1, 2, 3, 5, 6, 7, 9]
    assert step_plan(1024, 16, "reference_zero_first").group_sizes == [1] * 64


def test_reference_tail_carries_into_the_next_epoch():
    # .grad is never cleared after the last step of an epoch: the tail joins the next epoch's first step.
    assert list(step_groups(range(6), 4, "reference", epochs=2)) == [[0], [1, 2, 3, 4], [5, 0], [1, 2, 3, 4]]
    assert list(step_groups(range(6), 4, "every_k", epochs=2)) == [[0, 1, 2, 3], [4, 5]] * 2


def _batches(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 500, (1, 8), generator=g), "attention_mask": torch.ones(1, 8, dtype=torch.long),
             "labels": torch.randint(0, 2, (1,), generator=g)} for _ in range(n)]


def _literal_loop(model, batches, k, rule, epochs, lr):
    """The reference scripts' loops, line for line (an HF model's mean loss, divided by k)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        for batch_idx, batch in enumerate(batches):
            if rule == "every_k":
                out = model(**batch)
                (out.loss / k).backward()  # equal micro-batches: loss / k is the step's mean
                if (batch_idx + 1) % k == 0 or batch_idx + 1 == len(batches):
                    opt.step()
                    opt.zero_grad()
            elif rule == "reference":  # 2_batchsize-8.py, Fabric's docs
                out = model(**batch)
                (out.loss / k).backward()
                if not batch_idx % k:
                    opt.step()
                    opt.zero_grad()
            else:  # 2_batchsize-16.py
                out = model(**batch)
                if not batch_idx % k:
                    opt.zero_grad()
                (out.loss / k).backward()
                if not batch_idx % k:
                    opt.step()


@pytest.mark.parametrize("rule", ["reference", "reference_zero_first"])
@pytest.mark.parametrize("epochs", [1, 2])
def test_train_accumulated_reproduces_the_reference_loops(rule, epochs):
    batches = _batches(11)
    literal, ours = bloom_classifier(seed=4).eval(), bloom_classifier(seed=4).eval()
    _literal_loop(literal, batches, 4, rule, epochs, lr=0.3)
    ours.train = lambda mode=True: ours  # keep eval mode (no dropout): both loops compute one function
    log = train_accumulated(ours, batches, torch.optim.SGD(ours.parameters(), lr=0.3), 4, rule=rule, epochs=epochs,
                            progress=False)
    assert log.steps == 3 * epochs
    for a, b in zip(literal.parameters(), ours.parameters()):
        assert (a - b).abs().max() < 1e-6


def test_the_rules_differ_in_what_they_train_on():
    batches = _batches(11)
    weights = {}
    for rule in STEP_RULES:
        model = bloom_classifier(seed=4).eval()
        model.train = lambda mode=True, m=model: m
        train_accumulated(model, batches, torch.optim.SGD(model.parameters(), lr=0.3), 4, rule=rule, progress=False)
        weights[rule] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (weights["reference"] - weights["every_k"]).abs().max() > 1e-4
    assert (weights["reference_zero_first"] - weights["reference"]).abs().max() > 1e-4


def test_bad_rules_and_counts_are_named():
    with pytest.raises(ValueError, match="unknown stepping rule 'every_8'"):
        step_plan(4, 2, "every_8")
    with pytest.raises(ValueError, match="accumulation_steps must be an integer >= 1"):
        step_groups(range(4), 0)
    with pytest.raises(ValueError, match="outside"):
        should_step(5, 2, 4)
