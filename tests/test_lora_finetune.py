"""The chapter-3 fine-tuning loop: schedule, optimizer groups, training, evaluation, memory accounting."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from minillm.lora import LoRAConfig
from minillm.lora_finetune import (LORA_FINETUNE_PRESETS, LoRAFinetuneConfig, evaluate, lora_finetune_config_for_profile,
                                   lr_factor, make_adamw, train_classifier, training_state_bytes)
from minillm.lora_model import inject_lora
from minillm.pretrained import TokenizedDataset
from minillm.profile import Profile


def _tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def _toy_task(n: int = 64, seed: int = 0) -> TokenizedDataset:
    """Label 1 iff the sequence contains token 7: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for i in range(n):
        length = int(torch.randint(4, 10, (1,), generator=g))
        seq = torch.randint(10, 60, (length,), generator=g).tolist()
        label = i % 2
        if label:
            seq[int(torch.randint(1, length - 1, (1,), generator=g))] = 7
        ids.append([1, *seq, 2])
        labels.append(label)
    return TokenizedDataset(ids, labels)


def test_lr_schedule_warms_up_then_decays_to_zero():
    cfg = LoRAFinetuneConfig(max_steps=10, warmup_steps=2)
    factors = [lr_factor(s, cfg) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    assert lr_factor(10, cfg) == 0.0


def test_presets_and_profile_switch():
    assert lora_finetune_config_for_profile(Profile("tiny")) == LORA_FINETUNE_PRESETS["tiny"]
    full = lora_finetune_config_for_profile(Profile("full"))
    assert full.train_examples is None and full.max_steps > LORA_FINETUNE_PRESETS["tiny"].max_steps


def test_adamw_sees_only_trainable_parameters_and_refuses_none():
    model = _tiny_bert()
    inject_lora(model, LoRAConfig(r=4, alpha=8))
    opt = make_adamw(model, 1e-3, 0.01)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(p.dim() < 2 for p in opt.param_groups[1]["params"])  # biases: no weight decay
    everything = make_adamw(model, 1e-3, 0.01, decay_all=True)  # chapter 4: AdamW's default, every tensor decays
    assert [g["weight_decay"] for g in everything.param_groups] == [0.01]
    assert {id(p) for p in everything.param_groups[0]["params"]} == in_opt
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        make_adamw(model, 1e-3, 0.01)


@pytest.mark.parametrize("use_lora", [False, True])
def test_training_learns_a_toy_task_and_leaves_frozen_weights_alone(use_lora):
    data = _toy_task()
    model = _tiny_bert()
    if use_lora:
        inject_lora(model, LoRAConfig(r=8, alpha=16))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = evaluate(model, data)
    cfg = dataclasses.replace(LORA_FINETUNE_PRESETS["tiny"], batch_size=16, max_steps=60, warmup_steps=5)
    history = train_classifier(model, data, cfg, lr=3e-3, progress=False)
    after = evaluate(model, data)
    assert len(history.loss) == len(history.grad_norm) == 60
    assert history.examples == 60 * 16 and history.tokens == sum(len(x) for x in data.input_ids) * 15
    assert after["loss"] < before["loss"] and after["accuracy"] >= 0.9, (before, after)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"{name} is frozen but changed"


def test_evaluate_counts_correct_predictions():
    data = _toy_task(n=10)
    model = _tiny_bert()
    result = evaluate(model, data, batch_size=3)
    model.eval()
    with torch.no_grad():
        from minillm.pretrained import collate_padded

        batch = collate_padded([data[i] for i in range(len(data))])
        labels = batch.pop("labels")
        expected = (model(**batch).logits.argmax(-1) == labels).float().mean().item()
    assert result["accuracy"] == pytest.approx(expected)


def test_training_state_bytes_counts_weights_grads_and_adam_moments():
    model = _tiny_bert()
    n = sum(p.numel() for p in model.parameters())
    assert training_state_bytes(model) == {"weights": 4 * n, "gradients": 4 * n, "optimizer": 8 * n, "total": 16 * n}
    inject_lora(model, LoRAConfig(r=4, alpha=8))
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = make_adamw(model, 1e-3, 0.0)
    model(input_ids=torch.tensor([[1, 5, 2]]), labels=torch.tensor([0])).loss.backward()
    opt.step()  # now AdamW's state exists: it must be what was assumed before
    assert training_state_bytes(model, opt) == {"weights": 4 * n_all, "gradients": 4 * n_train,
                                                "optimizer": 8 * n_train, "total": 4 * n_all + 12 * n_train}
