"""minillm's LoRA against the reference implementation (the ``peft`` library, pinned in requirements.txt).

Same base weights, same adapter weights (copied by name: minillm uses the same parameter names), then the
outputs, gradients and merged weights must agree within 1e-5 — on small random BERT and Llama models and on
the real pretrained MiniLM encoder.
"""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from safetensors.torch import save_model
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from minillm.lora import LoRAConfig, LoRAEmbedding, LoRALinear
from minillm.lora import inject_lora, merge_lora, save_adapter, trainable_report

TOL = 1e-5


def _tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def _pair(base, ours: LoRAConfig, **ref_kwargs):
    """(minillm model, peft model) with identical random adapters (B != 0, so the update is not zero)."""
    ref = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=ours.r, lora_alpha=ours.alpha,
                                                                    lora_dropout=0.0, **ref_kwargs))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    mine = copy.deepcopy(base)
    inject_lora(mine, ours)
    state = {k.removeprefix("base_model.model."): v for k, v in ref.state_dict().items()}
    assert set(state) == set(mine.state_dict()), "parameter names differ from the reference"
    mine.load_state_dict(state)
    return mine.eval(), ref.eval()


def test_all_linear_classifier_matches_peft_outputs_and_gradients():
    mine, ref = _pair(_tiny_bert(), LoRAConfig(r=8, alpha=16), target_modules="all-linear", task_type="SEQ_CLS")
    assert trainable_report(mine).trainable == sum(p.numel() for p in ref.parameters() if p.requires_grad)
    ids = torch.randint(0, 120, (3, 11), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 1])
    out_mine, out_ref = mine(input_ids=ids, labels=labels), ref(input_ids=ids, labels=labels)
    assert (out_mine.logits - out_ref.logits).abs().max() < TOL
    out_mine.loss.backward()
    out_ref.loss.backward()
    ref_grads = {k.removeprefix("base_model.model."): p.grad for k, p in ref.named_parameters() if p.requires_grad}
    mine_grads = {k: p.grad for k, p in mine.named_parameters() if p.requires_grad}
    assert ref_grads.keys() == mine_grads.keys()
    for key, grad in mine_grads.items():
        assert (grad - ref_grads[key]).abs().max() < TOL, key


def test_embedding_and_named_targets_match_peft():
    ours = LoRAConfig(r=4, alpha=12, target_modules=("word_embeddings", "query", "value"))
    mine, ref = _pair(_tiny_bert(), ours, target_modules=["word_embeddings", "query", "value"],
                      modules_to_save=["classifier"])
    assert isinstance(mine.bert.embeddings.word_embeddings, LoRAEmbedding)
    ids = torch.randint(0, 120, (2, 9), generator=torch.Generator().manual_seed(3))
    assert (mine(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max() < TOL


def test_merged_weights_match_peft_merge_and_unload():
    mine, ref = _pair(_tiny_bert(), LoRAConfig(r=8, alpha=16), target_modules="all-linear", task_type="SEQ_CLS")
    merged_ref = ref.merge_and_unload()
    merge_lora(mine)
    w_mine = mine.bert.encoder.layer[1].intermediate.dense.base_layer.weight
    w_ref = merged_ref.bert.encoder.layer[1].intermediate.dense.weight
    assert (w_mine - w_ref).abs().max() < TOL


def test_decoder_all_linear_skips_lm_head_like_peft():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    base = LlamaForCausalLM(cfg).eval()
    mine, ref = _pair(base, LoRAConfig(r=8, alpha=16, modules_to_save=()), target_modules="all-linear",
                      task_type="CAUSAL_LM")
    assert not isinstance(mine.lm_head, LoRALinear)
    assert isinstance(mine.model.layers[0].mlp.gate_proj, LoRALinear)
    ids = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(4))
    assert (mine(input_ids=ids).logits - ref(input_ids=ids).logits).abs().max() < TOL


@pytest.fixture(scope="module")
def minilm():
    from minillm.pretrained import load_minilm_classifier

    model, tokenizer = load_minilm_classifier(seed=0)
    return model.eval(), tokenizer


def test_real_minilm_matches_peft(minilm):
    base, tokenizer = minilm
    mine, ref = _pair(base, LoRAConfig(r=8, alpha=16), target_modules="all-linear", task_type="SEQ_CLS")
    batch = tokenizer(["a gripping, funny and humane film", "tedious and overlong"], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        diff = (mine(**batch).logits - ref(**batch).logits).abs().max()
        assert diff < TOL
        before = mine(**batch).logits
        merge_lora(mine)
        assert (mine(**batch).logits - before).abs().max() < TOL


def test_real_minilm_adapter_file_is_under_two_percent_of_the_full_checkpoint(minilm, tmp_path):
    base, _ = minilm
    full = tmp_path / "full.safetensors"
    save_model(base, str(full))
    model = copy.deepcopy(base)
    inject_lora(model, LoRAConfig(r=8, alpha=16))
    adapter = save_adapter(model, tmp_path / "adapter.safetensors")
    ratio = adapter.stat().st_size / full.stat().st_size
    assert ratio <= 0.02, f"adapter is {100 * ratio:.2f}% of the full checkpoint"
    assert adapter.stat().st_size > 4 * trainable_report(model).trainable  # fp32 tensors are all in it
