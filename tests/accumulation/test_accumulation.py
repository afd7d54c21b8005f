"""Tests for minillm.accumulation and minillm.accumulation.experiment: the accumulated gradient is the full-batch one."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BloomConfig, BloomForCausalLM

from minillm.accumulation import (IGNORE_INDEX, accumulate_gradients, count_units, grouped, should_step,
                                  summed_loss, train_accumulated)
from minillm.accumulation.experiment import AccumulationConfig, Scheme, freeze_lower_layers, run_scheme
from minillm.core.evaluation import evaluate_classifier
from minillm.core.memory import _is_parameter_copy, saved_activation_bytes, training_state_bytes
from minillm.data.text_classification import classifier_forward
from minillm.pretrained import PretrainedModelMissing, bloom_classifier


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _classification_batch(n: int = 8, t: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 512, (n, t), generator=g)
    lengths = torch.randint(3, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()  # right padding
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}


def _lm_batch(n: int = 6, t: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 512, (n, t), generator=g)
    lengths = torch.tensor([16, 3, 14, 4, 12, 5])[:n]  # very unequal token counts per micro-batch
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def _rows(batch, idx):
    return {k: v[idx] for k, v in batch.items()}


def test_should_step_matches_grouping_including_the_tail():
    steps = [i for i in range(10) if should_step(i, 4, 10)]
    assert steps == [3, 7, 9]
    groups = list(grouped(range(10), 4))
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [g[-1] for g in groups] == steps
    assert list(grouped(range(3), 1)) == [[0], [1], [2]]
    with pytest.raises(ValueError, match="accumulation_steps"):
        should_step(0, 0, 10)
    with pytest.raises(ValueError, match="accumulation_steps"):
        list(grouped(range(3), 0))


def test_accumulated_gradient_equals_full_batch_for_bloom_classifier():
    model = bloom_classifier(pretrained=False, seed=0).eval()  # eval: no dropout, same function both ways
    batch = _classification_batch()
    (summed_loss(model, batch, "examples") / 8).backward()
    full = _grads(model).clone()
    model.zero_grad()
    micro = [_rows(batch, slice(0, 3)), _rows(batch, slice(3, 6)), _rows(batch, slice(6, 8))]  # 3 + 3 + 2
    accumulate_gradients(model, micro, unit="examples")
    assert torch.allclose(_grads(model), full, rtol=0, atol=1e-6)
    assert (_grads(model) - full).abs().max() < 1e-6


def test_mean_over_k_is_the_reference_scaling():
    model = bloom_classifier(pretrained=False, seed=0).eval()
    batch = _classification_batch(n=3)
    micro = [_rows(batch, slice(i, i + 1)) for i in range(3)]
    loss = accumulate_gradients(model, micro, "examples", "mean_over_k", accumulation_steps=4)
    with torch.no_grad():
        assert loss == pytest.approx(summed_loss(model, batch, "examples").item() / 4, rel=1e-5)
    with pytest.raises(ValueError, match="accumulation_steps=k"):
        accumulate_gradients(model, micro, "examples", "mean_over_k")


def test_non_finite_loss_is_reported_with_the_fix():
    model = bloom_classifier(pretrained=False, seed=0).eval()
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="is nan.*no longer finite.*lower the learning rate"):
        accumulate_gradients(model, [_classification_batch(n=2)])


def test_token_normalisation_is_exact_and_mean_of_means_is_not():
    torch.manual_seed(0)
    cfg = BloomConfig(vocab_size=512, hidden_size=64, n_layer=2, n_head=4, pad_token_id=0,
                      hidden_dropout=0.0, attention_dropout=0.0)
    model = BloomForCausalLM(cfg).eval()
    batch = _lm_batch()
    n_tokens = count_units(batch, "tokens")
    assert n_tokens == (15 + 2 + 13 + 3 + 11 + 4)
    (summed_loss(model, batch, "tokens") / n_tokens).backward()
    full = _grads(model).clone()
    micro = [_rows(batch, slice(i, i + 2)) for i in range(0, 6, 2)]
    model.zero_grad()
    accumulate_gradients(model, micro, unit="tokens", normalisation="units")
    assert (_grads(model) - full).abs().max() < 1e-6
    model.zero_grad()
    accumulate_gradients(model, micro, unit="tokens", normalisation="mean_of_means")
    wrong = _grads(model)
    assert (wrong - full).norm() / full.norm() > 0.05  # the bug is not a rounding error


def test_train_accumulated_takes_the_full_batch_step():
    batch = _classification_batch(n=8)
    models = [bloom_classifier(seed=1).eval() for _ in range(2)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in models]
    train_accumulated(models[0], [batch], opts[0], accumulation_steps=1, progress=False)
    models[1].train = lambda mode=True: models[1]  # keep eval mode (no dropout) for an exact comparison
    micro = [_rows(batch, slice(i, i + 2)) for i in range(0, 8, 2)]
    log = train_accumulated(models[1], micro, opts[1], accumulation_steps=4, progress=False)
    assert log.steps == 1 and log.examples == 8
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert (a - b).abs().max() < 1e-6


def test_tail_group_is_normalised_by_its_own_size():
    batch = _classification_batch(n=5)
    model = bloom_classifier(seed=2).eval()
    model.train = lambda mode=True: model
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    log = train_accumulated(model, [_rows(batch, slice(i, i + 1)) for i in range(5)], opt, 2, progress=False)
    assert log.steps == 3  # 2 + 2 + 1
    with torch.no_grad():
        last = summed_loss(model, _rows(batch, slice(4, 5)), "examples").item()
    assert log.loss[-1] == pytest.approx(last, rel=1e-5)


def test_bad_inputs_are_named():
    model = bloom_classifier(seed=0)
    batch = _classification_batch(n=2)
    with pytest.raises(ValueError, match="unit must be"):
        count_units(batch, "words")
    with pytest.raises(ValueError, match="unit='tokens'"):
        summed_loss(model, batch, "tokens")
    with pytest.raises(ValueError, match="normalisation"):
        accumulate_gradients(model, [batch], normalisation="median")
    with pytest.raises(ValueError, match="at least one"):
        accumulate_gradients(model, [])


def test_pretrained_bloom_offline_error_is_clear(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedModelMissing, match="HF_HUB_OFFLINE"):
        bloom_classifier(pretrained=True)


def test_activation_memory_grows_with_micro_batch_and_state_does_not():
    model = bloom_classifier(seed=0)
    one = saved_activation_bytes(model, lambda: summed_loss(model, _classification_batch(n=1, t=12), "examples"))
    sixteen = saved_activation_bytes(model, lambda: summed_loss(model, _classification_batch(n=16, t=12), "examples"))
    assert one > 0 and 12 * one < sixteen < 20 * one
    n_params = sum(p.numel() for p in model.parameters())
    assert training_state_bytes(model).total == 4 * n_params * 4  # fp32 weights, grads, two Adam moments


def test_freeze_lower_layers_and_accuracy_metric():
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64, num_labels=2)
    model = BertForSequenceClassification(cfg)
    n = freeze_lower_layers(model, 1)
    trainable = {name.split(".")[3] for name, p in model.named_parameters()
                 if p.requires_grad and name.startswith("bert.encoder")}
    assert trainable == {"3"} and model.classifier.weight.requires_grad and n > 0
    with pytest.raises(ValueError, match="trainable_layers"):
        freeze_lower_layers(model, 5)
    with pytest.raises(TypeError, match="BERT-style"):
        freeze_lower_layers(bloom_classifier(seed=0), 1)

    class Fixed(torch.nn.Module):  # predicts class 1 for every example
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": torch.tensor([[0.0, 1.0]]).expand(len(input_ids), 2)})

    loader = [{"input_ids": torch.zeros(4, 3, dtype=torch.long), "attention_mask": torch.ones(4, 3),
               "labels": torch.tensor([1, 0, 1, 1])}]
    assert evaluate_classifier(Fixed(), loader, classifier_forward).accuracy == pytest.approx(0.75)


@pytest.mark.slow
def test_run_scheme_smoke():
    cfg = AccumulationConfig(train_size=8, val_size=8, test_size=8, max_length=16, trainable_layers=1)
    result = run_scheme(Scheme(2, 2), cfg, progress=False)
    assert len(result.step_losses) == 2 and 0.0 <= result.test_accuracy <= 1.0 and len(result.test_correct) == 8
    assert result.activation_bytes > 0 and result.cuda_peak_bytes is None and result.examples_applied == 8
    ref = run_scheme(Scheme(1, 4, "reference"), cfg, progress=False)
    assert len(ref.step_losses) == 2 and ref.examples_applied == 5  # steps after 0 and 1..4; 5..7 never applied


def test_autocast_weight_copies_are_not_activations():
    weight = torch.nn.Parameter(torch.randn(4, 4))
    assert _is_parameter_copy(weight.to(torch.bfloat16))
    assert not _is_parameter_copy((weight * 2).to(torch.bfloat16))
    assert not _is_parameter_copy(torch.randn(4, 4).to(torch.bfloat16))
    model = bloom_classifier(seed=0).train()
    batch = _classification_batch(n=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = saved_activation_bytes(model, lambda: summed_loss(model, batch, "examples"))
    params = sum(p.numel() for p in model.parameters() if p.dim() == 2) * 2  # bf16 copies of all matrices
    # Copies of the weights are left out: what remains is the activations, in whichever precision they were saved.
    assert 0 < mixed < saved_activation_bytes(model, lambda: summed_loss(model, batch, "examples")) + params // 2


@pytest.mark.slow
def test_compiled_model_accumulates_into_the_same_grad():
    # torch.compile's graph capture and autograd (aot_eager: no C++ code generation, so the test stays short)
    model = bloom_classifier(seed=5).eval()
    batch = _classification_batch(n=4)
    micro = [_rows(batch, slice(i, i + 2)) for i in (0, 2)]
    accumulate_gradients(model, micro)
    eager = _grads(model).clone()
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    accumulate_gradients(compiled, micro)
    assert (_grads(model) - eager).abs().max() < 1e-6  # the compiled module's .grad is the original's
