"""The chapter-3 fine-tuning loop: schedule, optimizer groups, training, evaluation, memory accounting."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from minillm.lora import LoRAConfig
from minillm.core.memory import training_state_bytes
from minillm.core.training import make_adamw
from minillm.data.text_classification import TokenizedDataset, collate_padded, evaluate_text_classifier
from minillm.lora.finetune import (CLASSIFIER_FINETUNE_FULL, CLASSIFIER_FINETUNE_TINY, ClassifierFinetuneConfig,
                                   finetune_classifier)
from minillm.lora import inject_lora
from minillm.core.profile import Profile


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
    cfg = ClassifierFinetuneConfig(max_steps=10, warmup_steps=2)
    factors = [cfg.lr_at(s, 1.0) for s in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))
    assert cfg.lr_at(10, 1.0) == 0.0


def test_presets_and_profile_switch():
    assert Profile("tiny").pick(CLASSIFIER_FINETUNE_TINY, CLASSIFIER_FINETUNE_FULL) == CLASSIFIER_FINETUNE_TINY
    full = Profile("full").pick(CLASSIFIER_FINETUNE_TINY, CLASSIFIER_FINETUNE_FULL)
    assert full.train_examples is None and full.max_steps > CLASSIFIER_FINETUNE_TINY.max_steps
    smoke = Profile("full", smoke=True).pick(CLASSIFIER_FINETUNE_TINY, CLASSIFIER_FINETUNE_FULL)
    assert smoke.train_examples == 32 and smoke.max_steps == 2 and smoke.max_length == full.max_length


def test_adamw_sees_only_trainable_parameters_and_refuses_none():
    model = _tiny_bert()
    inject_lora(model, LoRAConfig(r=4, alpha=8))
    opt = make_adamw(model, 1e-3, 0.01)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(p.dim() < 2 for p in opt.param_groups[1]["params"])  # biases: no weight decay
    everything = make_adamw(model, 1e-3, 0.01, decay="all")  # chapter 4: AdamW's default, every tensor decays
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
    before = evaluate_text_classifier(model, data)
    cfg = dataclasses.replace(CLASSIFIER_FINETUNE_TINY, batch_size=16, max_steps=60, warmup_steps=5)
    history = finetune_classifier(model, data, cfg, lr=3e-3, progress=False)
    after = evaluate_text_classifier(model, data)
    assert len(history.loss) == len(history.grad_norm) == 60
    assert history.examples == 60 * 16 and history.tokens == sum(len(x) for x in data.input_ids) * 15
    assert after.loss < before.loss and after.accuracy >= 0.9, (before, after)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"{name} is frozen but changed"


def test_evaluate_counts_correct_predictions():
    data = _toy_task(n=10)
    model = _tiny_bert()
    result = evaluate_text_classifier(model, data, batch_size=3)
    model.eval()
    with torch.no_grad():
        batch = collate_padded([data[i] for i in range(len(data))])
        labels = batch.pop("labels")
        expected = (model(**batch).logits.argmax(-1) == labels).float().mean().item()
    assert result.accuracy == pytest.approx(expected) and result.n == 10


def test_training_state_bytes_counts_weights_grads_and_adam_moments():
    model = _tiny_bert()
    n = sum(p.numel() for p in model.parameters())
    state = training_state_bytes(model)
    assert (state.weights, state.gradients, state.optimizer, state.total) == (4 * n, 4 * n, 8 * n, 16 * n)
    inject_lora(model, LoRAConfig(r=4, alpha=8))
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = make_adamw(model, 1e-3, 0.0)
    model(input_ids=torch.tensor([[1, 5, 2]]), labels=torch.tensor([0])).loss.backward()
    opt.step()  # now AdamW's state exists: it must be what was assumed before
    state = training_state_bytes(model, opt)
    assert (state.weights, state.gradients, state.optimizer, state.total) == (
        4 * n_all, 4 * n_train, 8 * n_train, 4 * n_all + 12 * n_train)


def test_smoke_capped_decoder_preset_still_fills_one_batch():
    from minillm.lora import DECODER_FINETUNE_FULL, DECODER_FINETUNE_TINY

    for profile in (Profile("full", smoke=True), Profile("tiny", smoke=True)):
        cfg = profile.pick(DECODER_FINETUNE_TINY, DECODER_FINETUNE_FULL)
        assert cfg.train_examples >= cfg.batch_size and cfg.max_steps == 1, profile
