"""The MoE LM decodes with chapter 1's KV cache exactly as it recomputes; its dense baseline is chapter 1's GPT."""

from __future__ import annotations

import pytest
import torch

from minillm.gpt import GPT, gpt_config
from minillm.gpt.generation import generate
from minillm.moe import MoELM, dense_baseline, moe_config


@pytest.mark.parametrize("noisy", [True, False])
def test_cached_decoding_equals_recomputation(noisy):
    torch.manual_seed(0)
    model = MoELM(moe_config("moe-tiny", 30, block_size=16, n_embd=32, n_head=2, noisy=noisy))
    prompt = torch.randint(0, 30, (3, 5))
    runs = [generate(model, prompt, 25, temperature=0.8, top_k=8, use_cache=use_cache,
                     generator=torch.Generator().manual_seed(1), return_logits=True) for use_cache in (True, False)]
    (ids_c, logits_c), (ids_r, logits_r) = runs
    assert torch.equal(ids_c, ids_r)  # 25 > block_size - 5: the window slides and the cache is refilled
    assert (logits_c - logits_r).abs().max() < 1e-4


def test_cache_step_equals_the_full_forward_pass():
    torch.manual_seed(1)
    model = MoELM(moe_config("moe-tiny", 30, block_size=16, n_embd=32, n_head=2)).eval()
    x = torch.randint(0, 30, (2, 12))
    cache = model.new_cache(2)
    with torch.no_grad():
        full = model(x)[0]
        parts = torch.cat([model(x[:, :7], cache=cache)[0], model(x[:, 7:9], cache=cache)[0],
                           model(x[:, 9:], cache=cache)[0]], dim=1)
    assert (full - parts).abs().max() < 1e-5


def test_capacity_in_evaluation_makes_outputs_depend_on_batch_mates():
    torch.manual_seed(2)
    cfg = moe_config("moe-tiny", 30, block_size=16, n_embd=32, n_head=2, capacity_factor=0.5)
    model = MoELM(cfg).eval()
    x = torch.randint(0, 30, (4, 16))
    with torch.no_grad():
        together, alone = model(x)[0][:1], model(x[:1])[0]
        assert torch.equal(together, alone)  # no capacity in evaluation: each sequence is routed on its own
        for layer in model.moe_layers:
            layer.capacity_in_eval = True
        assert not torch.allclose(model(x)[0][:1], model(x[:1])[0], atol=1e-4)


def test_dense_equal_active_baseline_computes_chapter_1s_gpt():
    cfg = dense_baseline(moe_config("moe-tiny", 65), "active")
    torch.manual_seed(0)
    dense = MoELM(cfg).eval()
    gpt = GPT(gpt_config("gpt-tiny", 65, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                         n_embd=cfg.n_embd, dropout=0.0)).eval()
    names = {"moe.fc1": "mlp.c_fc", "moe.fc2": "mlp.c_proj"}
    state = {}
    for key, value in dense.state_dict().items():
        for ours, theirs in names.items():
            key = key.replace(ours, theirs)
        state[key] = value
    gpt.load_state_dict(state)
    x = torch.randint(0, 65, (2, 64))
    with torch.no_grad():
        assert (dense(x)[0] - gpt(x)[0]).abs().max() < 1e-5
    assert dense.num_params() == sum(p.numel() for p in gpt.parameters())


def test_dense_baselines_match_active_and_total_parameters():
    moe = MoELM(moe_config("moe-tiny", 65))
    active, total = (MoELM(dense_baseline(moe.config, m)) for m in ("active", "total"))
    assert abs(active.num_params() / moe.num_active_params() - 1) < 0.02
    assert abs(total.num_params() / moe.num_params() - 1) < 0.02
    assert total.config.activation == active.config.activation == moe.config.activation
    assert total.config.init == moe.config.init and total.config.capacity_factor is None
