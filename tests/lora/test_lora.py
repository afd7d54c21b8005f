"""LoRA layers and model-level adapters: initialisation, scaling, merge, injection, files, several adapters."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from minillm.lora import LORA_RECIPE, LoRAConfig, LoRAEmbedding, LoRALinear, ModulesToSave
from minillm.lora import (adapter_state_dict, delete_adapter, disable_adapters, inject_lora, load_adapter,
                                mark_only_lora_trainable, merge_lora, save_adapter, set_adapter,
                                trainable_report, unmerge_lora)


class TinyClassifier(nn.Module):
    """Embedding -> two linear blocks -> a classifier head (the shape of a sequence classifier)."""

    def __init__(self, vocab: int = 50, dim: int = 16, hidden: int = 24, labels: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.up = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.down = nn.Linear(hidden, dim)
        self.classifier = nn.Linear(dim, labels)

    def forward(self, ids):
        h = self.embed(ids)  # (B, T, dim)
        h = h + self.down(torch.relu(self.norm(self.up(h))))
        return self.classifier(h.mean(1))  # (B, labels)


def _randomise_adapters(model: nn.Module, seed: int = 0) -> None:
    """B starts at zero (the update is zero); give every adapter tensor random values so tests see it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.fixture
def ids():
    return torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(1))


def test_linear_init_follows_the_paper_and_starts_at_the_base_output():
    torch.manual_seed(0)
    base = nn.Linear(64, 32)
    layer = LoRALinear(copy.deepcopy(base))
    layer.add_adapter("default", LoRAConfig(r=4, alpha=8))
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert a.shape == (4, 64) and b.shape == (32, 4)
    assert torch.all(b == 0)
    bound = 1 / math.sqrt(64)  # kaiming_uniform with a=sqrt(5): gain sqrt(1/3) * sqrt(3 / fan_in)
    assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)


def test_embedding_init_is_reversed_and_starts_at_the_base_output(ids):
    base = nn.Embedding(50, 16)
    layer = LoRAEmbedding(copy.deepcopy(base))
    layer.add_adapter("default", LoRAConfig(r=4, alpha=8))
    assert torch.all(layer.lora_embedding_A["default"] == 0)
    assert layer.lora_embedding_B["default"].abs().sum() > 0
    torch.testing.assert_close(layer(ids), base(ids), rtol=0, atol=0)


def test_linear_update_is_alpha_over_r_times_BA():
    layer = LoRALinear(nn.Linear(10, 6))
    layer.add_adapter("default", LoRAConfig(r=2, alpha=6))
    _randomise_adapters(layer)
    x = torch.randn(3, 10)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = layer.base_layer(x) + 3.0 * x @ a.T @ b.T
    torch.testing.assert_close(layer(x), expected)
    assert LoRAConfig(r=8, alpha=16).scaling == 2.0


def test_embedding_update_matches_its_delta_weight(ids):
    layer = LoRAEmbedding(nn.Embedding(50, 16))
    layer.add_adapter("default", LoRAConfig(r=4, alpha=8))
    _randomise_adapters(layer)
    full_table = layer.base_layer.weight + layer.delta_weight("default")  # (50, 16)
    torch.testing.assert_close(layer(ids), full_table[ids])


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 32))
    layer.add_adapter("default", LoRAConfig(r=4, alpha=8, dropout=0.5))
    _randomise_adapters(layer)
    x = torch.randn(8, 32)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("cls, base", [(LoRALinear, nn.Linear(12, 20)), (LoRAEmbedding, nn.Embedding(50, 12))])
def test_merge_equals_unmerged_and_unmerge_restores_w0(cls, base):
    layer = cls(copy.deepcopy(base))
    layer.add_adapter("default", LoRAConfig(r=4, alpha=8))
    _randomise_adapters(layer)
    layer.eval()
    x = torch.randint(0, 50, (3, 5)) if cls is LoRAEmbedding else torch.randn(3, 12)
    before = layer(x)
    layer.merge()
    assert layer.merged
    assert (layer(x) - before).abs().max() < 1e-5
    assert not torch.allclose(layer.base_layer.weight, base.weight)
    layer.unmerge()
    assert (layer.base_layer.weight - base.weight).abs().max() < 1e-6
    assert (layer(x) - before).abs().max() < 1e-5


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(r=0)
    with pytest.raises(ValueError, match="dropout"):
        LoRAConfig(dropout=1.0)
    with pytest.raises(ValueError, match="all-linear"):
        LoRAConfig(target_modules="query")
    assert LORA_RECIPE.r == 8 and LORA_RECIPE.alpha == 16


def test_layers_reject_wrong_module_types_and_shapes():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Embedding(3, 4))
    with pytest.raises(TypeError, match="nn.Embedding"):
        LoRAEmbedding(nn.Linear(3, 4))
    layer = LoRALinear(nn.Linear(8, 4))
    layer.add_adapter("default", LoRAConfig(r=2))
    with pytest.raises(ValueError, match="last dimension 8"):
        layer(torch.randn(2, 9))
    with pytest.raises(ValueError, match="already exists"):
        layer.add_adapter("default", LoRAConfig(r=2))


def test_all_linear_skips_the_head_and_wraps_it_for_saving():
    model = TinyClassifier()
    names = inject_lora(model, LoRAConfig(r=4, alpha=8))
    assert names == ["up", "down"]
    assert isinstance(model.up, LoRALinear) and isinstance(model.classifier, ModulesToSave)
    assert isinstance(model.embed, nn.Embedding)
    report = trainable_report(model)
    lora_params = 4 * (16 + 24) + 4 * (24 + 16)  # r (d_in + d_out) per adapted layer
    head = 16 * 3 + 3
    assert report.trainable == lora_params + head
    assert "trainable params: 371" in str(report)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)


def test_named_targets_include_embeddings_and_errors_name_the_fix():
    model = TinyClassifier()
    assert inject_lora(model, LoRAConfig(r=2, target_modules=("embed", "up"), modules_to_save=())) == ["embed", "up"]
    assert isinstance(model.embed, LoRAEmbedding)
    with pytest.raises(ValueError, match="no module matches"):
        inject_lora(TinyClassifier(), LoRAConfig(target_modules=("query",)))
    with pytest.raises(TypeError, match="LayerNorm"):
        inject_lora(TinyClassifier(), LoRAConfig(target_modules=("norm",)))
    with pytest.raises(ValueError, match="modules_to_save"):
        inject_lora(TinyClassifier(), LoRAConfig(modules_to_save=("score",)))


def test_only_the_adapter_and_head_receive_gradients(ids):
    model = TinyClassifier()
    inject_lora(model, LoRAConfig(r=4, alpha=8))
    model(ids).sum().backward()
    for name, p in model.named_parameters():
        adapter = "lora_" in name or "modules_to_save" in name
        assert (p.grad is not None) == adapter, name
    # B = 0 at the start, so A's gradient is zero and B's is not: the update starts from B.
    assert model.up.lora_B["default"].weight.grad.abs().sum() > 0
    assert model.up.lora_A["default"].weight.grad.abs().sum() == 0


def test_model_merge_equals_unmerged(ids):
    model = TinyClassifier()
    inject_lora(model, LoRAConfig(r=4, alpha=8, target_modules=("embed", "up", "down")))
    _randomise_adapters(model)
    model.eval()
    before = model(ids)
    merge_lora(model)
    assert (model(ids) - before).abs().max() < 1e-5
    unmerge_lora(model)
    assert (model(ids) - before).abs().max() < 1e-5


def test_adapter_file_round_trip(tmp_path, ids):
    torch.manual_seed(0)
    base = TinyClassifier()
    tuned = copy.deepcopy(base)
    inject_lora(tuned, LoRAConfig(r=4, alpha=8))
    _randomise_adapters(tuned)
    path = save_adapter(tuned, tmp_path / "adapter.safetensors")
    keys = set(adapter_state_dict(tuned, "default"))
    assert keys == {"up.lora_A.default.weight", "up.lora_B.default.weight", "down.lora_A.default.weight",
                    "down.lora_B.default.weight", "classifier.modules_to_save.default.weight",
                    "classifier.modules_to_save.default.bias"}
    fresh = load_adapter(copy.deepcopy(base), path)
    torch.testing.assert_close(fresh(ids), tuned(ids), rtol=0, atol=0)
    renamed = load_adapter(copy.deepcopy(base), path, adapter_name="sentiment")
    assert renamed.lora_configs.keys() == {"sentiment"}
    torch.testing.assert_close(renamed(ids), tuned(ids), rtol=0, atol=0)


def test_adapter_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_adapter"):
        load_adapter(TinyClassifier(), tmp_path / "missing.safetensors")
    model = TinyClassifier()
    inject_lora(model, LoRAConfig(r=4, alpha=8))
    path = save_adapter(model, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="shape"):
        load_adapter(TinyClassifier(hidden=40), path)
    with pytest.raises(KeyError, match="no adapter"):
        adapter_state_dict(TinyClassifier(), "default")


def test_several_adapters_share_one_base(ids):
    torch.manual_seed(0)
    model = TinyClassifier()
    model.eval()
    base_out = model(ids)
    inject_lora(model, LoRAConfig(r=4, alpha=8), "a")
    inject_lora(model, LoRAConfig(r=2, alpha=2), "b")
    assert model.up.adapter_names == ["a", "b"]
    _randomise_adapters(model)
    set_adapter(model, "a")
    out_a = model(ids)
    assert all(p.requires_grad == (".a." in n or n.endswith(".a")) for n, p in model.named_parameters()
               if "lora_" in n or "modules_to_save" in n)
    set_adapter(model, "b")
    out_b = model(ids)
    assert not torch.allclose(out_a, out_b)
    with disable_adapters(model):
        torch.testing.assert_close(model(ids), base_out, rtol=0, atol=0)
    torch.testing.assert_close(model(ids), out_b, rtol=0, atol=0)
    merge_lora(model)  # b merged; disabling must still give the base model
    with disable_adapters(model):
        assert (model(ids) - base_out).abs().max() < 1e-5
    with pytest.raises(KeyError, match="no adapter 'c'"):
        set_adapter(model, "c")
    delete_adapter(model, "b")
    assert model.up.adapter_names == ["a"] and model.up.active_adapter == "a"
    torch.testing.assert_close(model(ids), out_a)


def test_merged_layer_refuses_to_switch_adapters():
    layer = LoRALinear(nn.Linear(4, 4))
    layer.add_adapter("a", LoRAConfig(r=2))
    layer.add_adapter("b", LoRAConfig(r=2))
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.set_adapter("b")


def test_mark_only_lora_trainable_freezes_everything_else():
    model = TinyClassifier()
    inject_lora(model, LoRAConfig(r=4, alpha=8, modules_to_save=()))
    for p in model.parameters():
        p.requires_grad_(True)
    mark_only_lora_trainable(model)
    assert trainable_report(model).trainable == 4 * (16 + 24) * 2
