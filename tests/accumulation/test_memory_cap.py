"""The activation cap refuses a micro-batch as a full device would, and names the micro-batch that fits."""

from __future__ import annotations

import pytest
import torch

from minillm.accumulation import (ActivationCapExceeded, activation_cap, check_micro_batch, summed_loss,
                                  train_accumulated)
from minillm.core.memory import saved_activation_bytes
from minillm.pretrained import bloom_classifier


def _batch(n: int, t: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 500, (n, t), generator=g), "attention_mask": torch.ones(n, t, dtype=torch.long),
            "labels": torch.randint(0, 2, (n,), generator=g)}


def _forward(model):
    return lambda b: summed_loss(model, b, "examples")


def test_meter_counts_what_core_memory_counts():
    model = bloom_classifier(seed=0).train()
    batch = _batch(4)
    with activation_cap(model, None) as meter:
        out = summed_loss(model, batch, "examples")
    del out
    assert meter.bytes == saved_activation_bytes(model, lambda: summed_loss(model, batch, "examples")) > 0


def test_activations_grow_linearly_with_the_micro_batch():
    model = bloom_classifier(seed=0).train()
    size = {m: check_micro_batch(model, _batch(m), 2**40, _forward(model)) for m in (1, 4, 8, 16)}
    assert 12 * size[1] < size[16] <= 16 * size[1]          # a small part (BLOOM's ALiBi slopes) does not grow
    assert abs((size[16] - size[8]) - 2 * (size[8] - size[4])) <= 0.01 * size[16]  # the rest grows linearly


def test_cap_refuses_batch_16_and_names_the_micro_batch_that_fits():
    model = bloom_classifier(seed=0).train()
    one = check_micro_batch(model, _batch(1), 2**40, _forward(model))
    cap = int(4.5 * one)  # room for 4 examples, not 5
    assert check_micro_batch(model, _batch(4), cap, _forward(model)) <= cap
    with pytest.raises(ActivationCapExceeded, match="micro_batch_size=4 with accumulation_steps=4") as info:
        check_micro_batch(model, _batch(16), cap, _forward(model))
    assert info.value.saved_bytes > cap and info.value.cap_bytes == cap
    whole = check_micro_batch(model, _batch(16), 2**40, _forward(model))
    assert info.value.saved_bytes < whole / 2  # stopped once past the cap, long before the forward pass ended
    with pytest.raises(ActivationCapExceeded, match="not even a micro-batch of 1 fits.*max_length"):
        check_micro_batch(model, _batch(2), one // 2, _forward(model))


def test_training_under_the_cap_fits_with_accumulation_and_not_without():
    model = bloom_classifier(seed=0).train()
    one = check_micro_batch(model, _batch(1), 2**40, _forward(model))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    micro = [_batch(1, seed=i) for i in range(8)]
    log = train_accumulated(model, micro, opt, 8, activation_cap_bytes=int(1.5 * one), progress=False)
    assert log.steps == 1 and log.examples == 8
    with pytest.raises(ActivationCapExceeded):
        train_accumulated(model, [_batch(8)], opt, 1, activation_cap_bytes=int(1.5 * one), progress=False)


@pytest.mark.parametrize("cap", [0, -5, float("nan"), "512MiB", True])
def test_bad_caps_are_named(cap):
    with pytest.raises(ValueError, match="cap_bytes must be a positive, finite number of bytes"):
        with activation_cap(bloom_classifier(seed=0), cap):
            pass
