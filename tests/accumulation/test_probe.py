"""The seeds study's linear probe trains with the chapter's step loop: accumulation 16 is batch 16, exactly."""

from __future__ import annotations

from dataclasses import replace

import torch

from minillm.accumulation import PROBE_TINY, FeatureClassifier, ProbeFeatures, run_probe, summed_loss


def _features(n=64, d=12, seed=0) -> ProbeFeatures:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    parts = []
    for size in (n, 32, 48):
        x = torch.nn.functional.normalize(torch.randn(size, d, generator=g), dim=-1)
        parts += [x, (x @ w > 0).long()]  # a linearly separable task
    return ProbeFeatures(*parts)


CFG = replace(PROBE_TINY, train_size=64, epochs=2, dropout=0.0)


def test_rows_are_looked_up_by_index():
    feats = _features()
    model = FeatureClassifier(feats.train, dropout=0.0, seed=1).eval()
    idx = torch.tensor([[3], [0], [7]])
    out = model(input_ids=idx, attention_mask=torch.ones(3, 1, dtype=torch.long)).logits
    torch.testing.assert_close(out, model.head(feats.train[[3, 0, 7]]))
    batch = {"input_ids": idx, "attention_mask": torch.ones(3, 1, dtype=torch.long), "labels": feats.train_labels[[3, 0, 7]]}
    assert summed_loss(model, batch, "examples").shape == ()


def test_accumulation_16_without_dropout_is_batch_16():
    feats = _features()
    acc = run_probe("accumulation 16", feats, CFG, seed=3)
    big = run_probe("batch 16", feats, CFG, seed=3)
    assert len(acc.step_losses) == len(big.step_losses) == 2 * 64 // 16
    assert max(abs(a - b) for a, b in zip(acc.step_losses, big.step_losses)) < 1e-6
    assert acc.test_correct == big.test_correct and acc.val_accuracy == big.val_accuracy
    assert acc.examples_applied == big.examples_applied == 128


def test_schemes_learn_and_the_zero_first_rule_applies_one_example_per_step():
    feats = _features()
    b1 = run_probe("batch 1", feats, CFG, lr=1e-2, seed=0)
    assert len(b1.step_losses) == 128 and b1.test_accuracy > 0.8  # a separable task: batch 1 learns it
    zero_first = run_probe("accumulation 16, reference zero-first", feats, CFG, seed=0)
    assert zero_first.examples_applied == len(zero_first.step_losses) == 128 // 16
    reference = run_probe("accumulation 16, reference rule", feats, CFG, seed=0)
    assert reference.examples_applied == 128 - 15  # the first step applies 1 example, the last 15 never


def test_a_seed_repeats_and_another_seed_differs():
    feats = _features()
    cfg = replace(CFG, dropout=0.1)
    a, b = run_probe("batch 16", feats, cfg, seed=4), run_probe("batch 16", feats, cfg, seed=4)
    assert a.step_losses == b.step_losses and a.test_correct == b.test_correct
    assert run_probe("batch 16", feats, cfg, seed=5).step_losses != a.step_losses
