"""Chapter 2: the MoE language model, its presets, init schemes, load metrics and the benchmark."""

from __future__ import annotations

import json
import math

import pytest
import torch

from minillm.data.lm_batches import TokenSplits
from minillm.gpt import GPT, gpt_config
from minillm.core.profile import Profile
from minillm.gpt.train import LMTrainConfig, train_lm
from minillm.moe import MoELM, init_weights, moe_config
from minillm.moe.monitoring import expert_load, load_callback, load_history
from notebook_utils import load_script


def tiny(**overrides) -> MoELM:
    torch.manual_seed(0)
    return MoELM(moe_config("moe-tiny", vocab_size=20, n_layer=2, n_embd=32, n_head=4, block_size=16, **overrides))


def test_makemoe_preset_matches_the_original_parameter_count():
    model = MoELM(moe_config("makemoe", vocab_size=65))
    assert model.num_params() == 8_996_545  # makeMoE's printed count for the same configuration
    expert = 2 * 128 * 512 + 512 + 128
    assert model.num_params() - model.num_active_params() == 8 * 6 * expert


def test_tiny_preset_has_the_dense_gpts_active_parameters():
    moe = MoELM(moe_config("moe-tiny", vocab_size=65))
    cfg = moe.config
    gpt = GPT(gpt_config("gpt-tiny", 65, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                         n_embd=cfg.n_embd))
    dense = sum(p.numel() for p in gpt.parameters())
    assert abs(moe.num_active_params() / dense - 1) < 0.03  # routers and expert biases: a few percent
    assert moe.num_params() > 2.5 * dense


def test_profile_picks_preset():
    pick = lambda profile: moe_config(Profile(profile).pick("moe-tiny", "makemoe"), 65)  # noqa: E731
    assert pick("tiny").n_layer == 2 and pick("full").n_layer == 8
    assert MoELM(pick("full")).num_params() == 8_996_545  # makeMoE's count, to the parameter
    with pytest.raises(ValueError, match="unknown MoE preset"):
        moe_config("huge", 65)


def test_forward_shapes_and_aux_loss_only_in_training():
    model = tiny(noisy=False, balance_coef=0.5, z_coef=0.1)
    x = torch.randint(0, 20, (3, 16))
    y = torch.randint(0, 20, (3, 16))
    model.train()
    logits, train_loss = model(x, y)
    assert logits.shape == (3, 16, 20)
    parts = model.last_losses
    assert train_loss.item() == pytest.approx(parts["ce"] + 0.5 * parts["balance"] + 0.1 * parts["z"], rel=1e-5)
    model.eval()
    _, eval_loss = model(x, y)
    assert eval_loss.item() == pytest.approx(parts["ce"], rel=1e-5)  # no dropout, no noise: same CE
    assert model(x)[1] is None


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.zeros(17, dtype=torch.long))
    with pytest.raises(ValueError, match="init"):
        moe_config("moe-tiny", 65, init="orthogonal")
    with pytest.raises(ValueError, match="divisible"):
        moe_config("moe-tiny", 65, n_head=5)


@pytest.mark.parametrize("scheme,std", [("kaiming", lambda fi, fo: math.sqrt(2 / fi)),
                                        ("glorot", lambda fi, fo: math.sqrt(2 / (fi + fo)))])
def test_init_schemes_set_the_expected_weight_scale(scheme, std):
    torch.manual_seed(0)
    model = MoELM(moe_config("makemoe", vocab_size=65, init=scheme))
    bank = model.blocks[0].moe.experts
    for e in (0, 7):  # every expert is initialised like its own Linear layers
        assert bank.w1[e].std().item() == pytest.approx(std(128, 512), rel=0.03)  # (512, 128)
        assert bank.w2[e].std().item() == pytest.approx(std(512, 128), rel=0.03)  # (128, 512)
    assert bank.b1.abs().max() == 0 and bank.b2.abs().max() == 0
    with pytest.raises(ValueError, match="init"):
        init_weights(model, "orthogonal")


def test_tied_head_keeps_the_embedding():
    model = tiny(tie_weights=True)
    assert model.lm_head.weight is model.wte.weight
    assert model.wte.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_expert_load_and_callback_metrics():
    model = tiny(capacity_factor=1.0)
    x = torch.randint(0, 20, (4, 16))
    stats = expert_load(model, x)
    assert stats["load"].shape == (2, 8)
    torch.testing.assert_close(stats["load"].sum(-1), torch.ones(2))
    metrics = load_callback(x)(10, model)
    assert metrics["max_load_ratio"] == pytest.approx(float(stats["load"].max() * 8))
    assert 0.0 <= metrics["dropped_fraction"] < 1.0 and metrics["balance_loss"] >= 1.0 - 1e-6
    hist = load_history([metrics, metrics], n_layer=2, n_experts=8)
    assert hist.shape == (2, 2, 8)
    torch.testing.assert_close(hist[0], stats["load"])


def test_train_lm_runs_the_moe_and_logs_load():
    torch.manual_seed(0)
    tokens = torch.randint(0, 20, (3000,))
    splits = TokenSplits.from_tokens(tokens)
    model = tiny()
    cfg = LMTrainConfig(max_iters=12, batch_size=4, warmup_iters=2, eval_interval=6, eval_iters=2)
    history = train_lm(model, splits, cfg, progress=False, eval_callback=load_callback(splits.val[:16].view(1, 16)))
    assert history.iters == [6, 12] and len(history.extra) == 2
    assert "max_load_ratio" in history.extra[-1]
    assert all(math.isfinite(v) for v in history.batch_loss)


def test_benchmark_quick_run_records_equal_outputs(tmp_path):
    bench = load_script("benchmarks/ch02_moe_dispatch.py")
    out = bench.main(["--quick", "--device", "cpu", "--out", str(tmp_path / "r.json")])
    results = json.loads(out.read_text())
    for row in results["by_tokens"].values():
        assert max(row["max_abs_diff_vs_masked_loop"].values()) <= 1e-5
        for mode in ("dispatch", "dispatch_train", "forward", "train"):
            assert {"sorted", "batched", "dense"} <= set(row[mode]["speedup_vs_masked_loop"])
            assert row[mode]["speedup_vs_masked_loop"]["batched"] > 0
        for mode in ("dispatch", "dispatch_train"):  # the floor is timed beside the strategies, in the same rounds
            assert row[mode]["over_floor"]["batched"] > 0 and "floor" in row[mode]
        assert row["padding"] >= 1.0
    assert set(results["headline"]["batched_over_floor"]) == {"8", "64"}
    assert results["machine"]["device_type"] == "cpu"
