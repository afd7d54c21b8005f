"""The accumulation step chapter 4 writes inline computes exactly what minillm.accumulation computes."""

import torch

from minillm.accumulation import IGNORE_INDEX, accumulate_gradients, count_units, should_step, summed_loss
from minillm.pretrained import bloom_classifier
from notebook_utils import exec_tagged_cells

NOTEBOOK = "book/ch04_grad_accumulation.ipynb"


def _batch(n, t, seed, lm=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 512, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX) if lm else torch.randint(0, 2, (n,), generator=g)
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()


def test_notebook_should_step_equals_package():
    ns = exec_tagged_cells(NOTEBOOK)
    for n in range(1, 12):
        for k in range(1, 6):
            assert [ns["should_step"](i, k, n) for i in range(n)] == [should_step(i, k, n) for i in range(n)]


def test_notebook_accumulate_equals_package_for_examples_and_tokens():
    ns = exec_tagged_cells(NOTEBOOK)
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    lm = BloomForCausalLM(BloomConfig(vocab_size=512, hidden_size=32, n_layer=1, n_head=2, pad_token_id=0)).eval()
    clf = bloom_classifier(seed=3, hidden_size=32, n_layer=1, n_head=2).eval()
    for model, unit, lm_batch in ((clf, "examples", False), (lm, "tokens", True)):
        batch = _batch(6, 10, seed=1, lm=lm_batch)
        micro = [{k: v[i:i + 2] for k, v in batch.items()} for i in range(0, 6, 2)]
        assert [ns["count_units"](b, unit) for b in micro] == [count_units(b, unit) for b in micro]
        torch.testing.assert_close(ns["summed_loss"](model, batch, unit), summed_loss(model, batch, unit))
        for bug in (False, True):
            model.zero_grad()
            loss_nb = ns["accumulate"](model, micro, unit, mean_of_means=bug)
            g_nb = _grads(model)
            model.zero_grad()
            loss_pkg = accumulate_gradients(model, micro, unit, "mean_of_means" if bug else "units")
            torch.testing.assert_close(g_nb, _grads(model), rtol=0, atol=1e-7)
            assert abs(loss_nb - loss_pkg) < 1e-6
