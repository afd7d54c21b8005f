"""Wider LoRA support, each held equal to ``peft``: GPT-2's Conv1D under "all-linear", rank-stabilised scaling,
a merge that refuses NaN/inf (safe_merge), and one batch whose rows use different adapters."""

from __future__ import annotations

import copy
import math

import peft
import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

from minillm.lora import (BASE_ROW, LoRAConfig, LoRALinear, adapter_per_row, inject_lora, merge_lora, save_adapter,
                          load_adapter, set_adapter, trainable_report, unmerge_lora)

TOL = 1e-5


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _randomise(model: nn.Module, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def _copy_from_peft(mine: nn.Module, ref: nn.Module) -> None:
    state = {k.removeprefix("base_model.model."): v for k, v in ref.state_dict().items()}
    assert set(state) == set(mine.state_dict()), set(state) ^ set(mine.state_dict())
    mine.load_state_dict(state)


def test_conv1d_layer_matches_a_transposed_linear():
    torch.manual_seed(0)
    conv = Conv1D(12, 20)  # nf=12 outputs, nx=20 inputs; weight (20, 12)
    layer = LoRALinear(copy.deepcopy(conv))
    layer.add_adapter("default", LoRAConfig(r=4, alpha=8))
    assert (layer.in_features, layer.out_features, layer.fan_in_fan_out) == (20, 12, True)
    _randomise(layer, 0)
    x = torch.randn(3, 5, 20)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    torch.testing.assert_close(layer(x), conv(x) + 2.0 * x @ a.T @ b.T)
    before = layer(x)
    layer.merge(safe_merge=True)
    assert layer.base_layer.weight.shape == (20, 12)
    assert (layer(x) - before).abs().max() < TOL
    layer.unmerge()
    assert (layer.base_layer.weight - conv.weight).abs().max() < 1e-6


def test_gpt2_all_linear_adapts_conv1d_like_peft_outputs_gradients_and_merge():
    base = _gpt2()
    ref = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                                   target_modules="all-linear", fan_in_fan_out=True))
    _randomise(ref, 1)
    mine = copy.deepcopy(base)
    names = inject_lora(mine, LoRAConfig(r=4, alpha=8, modules_to_save=()))
    assert sorted(names) == sorted(n.removeprefix("base_model.model.") for n, m in ref.named_modules()
                                   if isinstance(m, peft.tuners.lora.Linear))
    assert all(isinstance(mine.get_submodule(n).base_layer, Conv1D) for n in names)  # c_attn, c_proj, c_fc, ...
    assert not isinstance(mine.lm_head, LoRALinear)
    _copy_from_peft(mine, ref)
    assert trainable_report(mine).trainable == sum(p.numel() for p in ref.parameters() if p.requires_grad)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    out_mine, out_ref = mine(input_ids=ids, labels=ids), ref(input_ids=ids, labels=ids)
    assert (out_mine.logits - out_ref.logits).abs().max() < TOL
    out_mine.loss.backward()
    out_ref.loss.backward()
    grads_ref = {k.removeprefix("base_model.model."): p.grad for k, p in ref.named_parameters() if p.requires_grad}
    for key, p in mine.named_parameters():
        if p.requires_grad:
            assert (p.grad - grads_ref[key]).abs().max() < TOL, key
    merged_ref = ref.merge_and_unload()
    merge_lora(mine, safe_merge=True)
    w_mine = mine.transformer.h[0].attn.c_attn.base_layer.weight
    assert (w_mine - merged_ref.transformer.h[0].attn.c_attn.weight).abs().max() < TOL


@pytest.mark.parametrize("r", [2, 16])
def test_rslora_scale_is_alpha_over_sqrt_r_like_peft(r):
    base = _llama()
    ref = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=8, lora_dropout=0.0,
                                                                   target_modules="all-linear", use_rslora=True))
    _randomise(ref, 3)
    mine = copy.deepcopy(base)
    inject_lora(mine, LoRAConfig(r=r, alpha=8, use_rslora=True, modules_to_save=()))
    _copy_from_peft(mine, ref)
    assert mine.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(8 / math.sqrt(r))
    ids = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(4))
    assert (mine(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max() < TOL


def test_safe_merge_refuses_non_finite_weights_and_changes_nothing():
    model = _llama()
    inject_lora(model, LoRAConfig(r=4, alpha=8, modules_to_save=()))
    _randomise(model, 5)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.lora_B["default"].weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="NaN or inf.*model.layers.1.mlp.up_proj.*lower learning rate"):
        merge_lora(model, safe_merge=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or (before[k].isnan() == after[k].isnan()).all() for k in before)
    assert not any(m.merged for m in model.modules() if isinstance(m, LoRALinear))
    layer = model.model.layers[1].mlp.up_proj
    with pytest.raises(ValueError, match="diverged"):
        layer.merge(safe_merge=True)
    # peft refuses the same adapter
    ref = peft.get_peft_model(_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    ref.load_state_dict({"base_model.model." + k: v for k, v in model.state_dict().items()}, strict=False)
    with pytest.raises(ValueError, match="NaN"):
        ref.merge_and_unload(safe_merge=True)
    merge_lora(model)  # an unsafe merge goes through, and the weight is broken
    assert not torch.isfinite(layer.base_layer.weight).all()


def _two_adapter_llama():
    model = _llama()
    inject_lora(model, LoRAConfig(r=4, alpha=8, modules_to_save=()), "sql")
    inject_lora(model, LoRAConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj"), modules_to_save=()), "chat")
    _randomise(model, 6, scale=0.3)
    return model.eval()


def test_mixed_adapter_batch_equals_one_forward_per_adapter():
    model = _two_adapter_llama()
    ids = torch.randint(0, 96, (5, 8), generator=torch.Generator().manual_seed(7))
    rows = ["sql", BASE_ROW, "chat", "sql", "chat"]
    with torch.no_grad():
        with adapter_per_row(model, rows):
            mixed = model(input_ids=ids).logits
        expected = torch.empty_like(mixed)
        for name in ("sql", "chat"):
            set_adapter(model, name)
            out = model(input_ids=ids).logits
            for i, row in enumerate(rows):
                if row == name:
                    expected[i] = out[i]
        from minillm.lora import disable_adapters

        with disable_adapters(model):
            expected[1] = model(input_ids=ids).logits[1]
    assert (mixed - expected).abs().max() < TOL
    assert all(m.row_adapters is None for m in model.modules() if hasattr(m, "row_adapters"))


def test_mixed_adapter_batch_equals_peft_adapter_names():
    base = _llama()
    ref = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
                              adapter_name="sql")
    ref.add_adapter("chat", peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    _randomise(ref, 8, scale=0.3)
    mine = copy.deepcopy(base)
    inject_lora(mine, LoRAConfig(r=4, alpha=8, modules_to_save=()), "sql")
    inject_lora(mine, LoRAConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj"), modules_to_save=()), "chat")
    _copy_from_peft(mine, ref)
    ref.eval(), mine.eval()
    ids = torch.randint(0, 96, (4, 6), generator=torch.Generator().manual_seed(9))
    rows = ["chat", "sql", BASE_ROW, "chat"]
    with torch.no_grad(), adapter_per_row(mine, rows):
        ours = mine(input_ids=ids).logits
    with torch.no_grad():
        theirs = ref(input_ids=ids, adapter_names=rows).logits
    assert (ours - theirs).abs().max() < TOL


def test_mixed_batch_with_a_classifier_head_per_adapter(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1,
                                                    num_attention_heads=4, intermediate_size=64,
                                                    max_position_embeddings=32)).eval()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    for model, seed in ((a, 1), (b, 2)):
        inject_lora(model, LoRAConfig(r=4, alpha=8))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name or "modules_to_save" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    served = copy.deepcopy(base)
    load_adapter(served, save_adapter(a, tmp_path / "a.safetensors"), "a")
    load_adapter(served, save_adapter(b, tmp_path / "b.safetensors"), "b")
    served.eval()
    ids = torch.randint(0, 60, (3, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with adapter_per_row(served, ["b", "a", BASE_ROW]):
            mixed = served(input_ids=ids).logits
        assert (mixed[0] - b.eval()(input_ids=ids).logits[0]).abs().max() < TOL
        assert (mixed[1] - a.eval()(input_ids=ids).logits[1]).abs().max() < TOL
        assert (mixed[2] - base(input_ids=ids).logits[2]).abs().max() < TOL


def test_mixed_batch_refuses_merged_weights_unknown_names_and_wrong_lengths():
    model = _two_adapter_llama()
    ids = torch.randint(0, 96, (2, 5))
    with pytest.raises(ValueError, match="no adapter.*'typo'.*__base__"):
        with adapter_per_row(model, ["sql", "typo"]):
            pass
    with pytest.raises(ValueError, match="one adapter name per row"):
        with adapter_per_row(model, ["sql", "sql", "sql"]), torch.no_grad():
            model(input_ids=ids)
    set_adapter(model, "sql")
    merge_lora(model)
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        with adapter_per_row(model, ["sql", "chat"]):
            pass
    unmerge_lora(model)
