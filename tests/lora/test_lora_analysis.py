"""The SVD analysis, the mean-pooling head and the decoder task: exact on cases whose answer is known."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from minillm.data.sentiment import Example
from minillm.lora import (ASPECTS, DecoderFinetuneConfig, GenerationExample, LoRAConfig, MeanPoolClassifier,
                          collate_generation, energy_captured, exact_match, finetune_causal_lm, inject_lora,
                          meaning_representation, spectrum_report, subspace_overlap, truncate_updates,
                          weight_updates)


def test_energy_of_a_known_spectrum():
    u, _ = torch.linalg.qr(torch.randn(20, 20, generator=torch.Generator().manual_seed(0)))
    v, _ = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(1)))
    s = torch.tensor([4.0, 3.0, 2.0, 1.0] + [0.0] * 6)
    delta = u[:, :10] @ torch.diag(s) @ v.T
    assert energy_captured(delta, 1) == pytest.approx(16 / 30)
    assert energy_captured(delta, 2) == pytest.approx(25 / 30)
    assert energy_captured(delta, 4) == pytest.approx(1.0)
    report = spectrum_report({"a": delta, "b": torch.eye(10)}, 2)
    assert report.energy[1] == pytest.approx(0.2) and report.baseline == [0.2, 0.2]


def test_subspace_overlap_is_one_for_the_same_space_and_small_for_unrelated_ones():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 2, generator=g) @ torch.randn(2, 200, generator=g)
    mixed = a @ torch.linalg.qr(torch.randn(200, 200, generator=g))[0]  # same column space, new row space
    assert subspace_overlap(a, 3.0 * mixed, 2, "left") == pytest.approx(1.0, abs=1e-6)
    assert subspace_overlap(a, mixed, 2, "right") < 0.1
    unrelated = torch.randn(300, 2, generator=g) @ torch.randn(2, 200, generator=g)
    assert subspace_overlap(a, unrelated, 2) < 0.1  # about k / d_out = 2 / 300 expected


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(12, 8)
        self.b = nn.Linear(8, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_weight_updates_and_truncation():
    torch.manual_seed(0)
    base = Pair()
    tuned = copy.deepcopy(base)
    low = torch.randn(8, 2) @ torch.randn(2, 12)
    with torch.no_grad():
        tuned.a.weight += low
        tuned.b.weight += torch.randn(4, 8)
    updates = weight_updates(tuned, base, ["a", "b"])
    torch.testing.assert_close(updates["a"], low)
    cut = truncate_updates(tuned, base, ["a", "b"], 2)
    torch.testing.assert_close(cut.a.weight, tuned.a.weight, atol=1e-5, rtol=0)  # rank 2 already: unchanged
    assert torch.linalg.matrix_rank(cut.b.weight - base.b.weight) == 2
    lora = copy.deepcopy(base)
    inject_lora(lora, LoRAConfig(r=2, alpha=4, modules_to_save=()))
    with torch.no_grad():
        lora.a.lora_B["default"].weight.normal_()
    delta = weight_updates(lora, base, ["a"])["a"]
    torch.testing.assert_close(delta, lora.a.delta_weight("default"))


def _bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    max_position_embeddings=16, hidden_dropout_prob=0.0)).eval()


def test_mean_pool_head_reads_the_masked_mean_and_ignores_padding():
    model = MeanPoolClassifier(_bert()).eval()
    assert model.bert.pooler is None
    ids = torch.tensor([[1, 5, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        hidden = model.bert(input_ids=ids[:, :3]).last_hidden_state
        expected = model.classifier(hidden.mean(1))
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([1]))
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    assert out.loss > 0
    names = inject_lora(model, LoRAConfig(r=2, alpha=4))
    assert not any("pooler" in n for n in names) and "classifier" not in names


def test_meaning_representation_finds_aspects_in_list_order():
    assert (meaning_representation(Example("The script is weak but the acting and music shine.", 1))
            == "review(sentiment[positive], aspects[acting, story, music])")
    assert meaning_representation(Example("A dull mess.", 0)) == "review(sentiment[negative], aspects[none])"
    assert "scored" not in {w for ws in ASPECTS.values() for w in ws}  # whole words only: 'score' is not an aspect


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _examples(n: int, seed: int = 0) -> list[GenerationExample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(5, 40, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist()
        target = [3 + (prompt[-1] % 2), 4, 2]  # a rule the model can learn, then the end token (2)
        out.append(GenerationExample(prompt, target, str(i), str(target)))
    return out


def test_collate_masks_prompt_and_padding():
    batch = collate_generation(_examples(3), pad_id=2)
    for i, e in enumerate(_examples(3)):
        n = len(e.prompt_ids) + len(e.target_ids)
        assert batch["labels"][i, :len(e.prompt_ids)].eq(-100).all() and batch["labels"][i, n:].eq(-100).all()
        assert batch["labels"][i, len(e.prompt_ids):n].tolist() == e.target_ids
        assert batch["attention_mask"][i].sum() == n


def test_exact_match_equals_greedy_generation_and_training_raises_it():
    model = _tiny_llama()
    train, test = _examples(64, 0), _examples(24, 1)
    before = exact_match(model, test, pad_id=2, batch_size=5)
    cfg = DecoderFinetuneConfig(max_length=16, train_examples=64, val_examples=8, test_examples=24, batch_size=8,
                                max_steps=60, warmup_steps=5)
    log = finetune_causal_lm(model, train, cfg, 3e-3, pad_id=2, progress=False)
    after = exact_match(model, test, pad_id=2, batch_size=5)
    assert log.steps == 60 and after.accuracy >= before.accuracy + 0.2
    assert 0 < after.correct.sum() < len(test) or after.accuracy == 1.0
    with torch.no_grad():  # the teacher-forced score is exactly greedy decoding's exact match
        for example, hit in zip(test, after.correct.tolist()):
            prompt = torch.tensor([example.prompt_ids])
            ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=len(example.target_ids), pad_token_id=2)
            assert (ids[0, prompt.shape[1]:].tolist() == example.target_ids) == hit
