"""UPDP blocks, models and stages: progressive activation, merging whole models, search, λ schedule, data."""

import random

import numpy as np
import pytest
import torch

from minillm.prune import (ProgressiveAct, ResCNN, SearchConfig, TinyViT, TokenBatchNorm, count_layers,
                           exhaustive_search, genetic_search, lambda_schedule)
from minillm.data.images import ImageData, fashion_mnist_dir, load_digits_data, load_image_data, read_idx
from minillm.prune.models import ResCNNConfig, ViTConfig
from minillm.prune.search import crossover, mutate, random_mask
from minillm.prune.supernet import sandwich_subnets
from minillm.prune.training import ImageTrainConfig, image_accuracy, recalibrate_bn, train_image_classifier
from minillm.prune.progressive import train_subnet

RTOL = 1e-5
SMALL_CNN = ResCNNConfig(channels=8, expand=16, depth=4)
SMALL_VIT = ViTConfig(dim=16, heads=2, depth=3)
BOTTLENECK_CNN = ResCNNConfig(channels=8, expand=16, depth=4, block="bottleneck")


def rel_err(a, b):
    return float(((a - b).abs().max() / b.abs().max()).detach())


def random_bn_stats(model, x, steps=3):
    """Give every BN non-trivial affine parameters and running statistics, then switch to eval."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    return model.eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_progressive_act_endpoints_and_midpoint():
    act, x = ProgressiveAct("gelu"), torch.randn(50)
    assert torch.equal(act(x, 0.0), torch.nn.functional.gelu(x))
    assert torch.equal(act(x, 1.0), x)
    assert torch.allclose(act(x, 0.25), 0.75 * torch.nn.functional.gelu(x) + 0.25 * x)
    with pytest.raises(ValueError, match="λ"):
        act(x, 1.5)


def test_token_batchnorm_matches_batchnorm1d_on_flat_tokens():
    bn, ref = TokenBatchNorm(6), torch.nn.BatchNorm1d(6)
    x = torch.randn(4, 5, 6)
    assert torch.allclose(bn(x), ref(x.reshape(20, 6)).reshape(4, 5, 6))
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        bn(torch.randn(4, 6))


@pytest.mark.parametrize("make, cfg", [(ResCNN, SMALL_CNN), (ResCNN, BOTTLENECK_CNN), (TinyViT, SMALL_VIT)])
def test_merged_model_equals_unmerged_subnet(make, cfg):
    model = make(cfg)
    mask = tuple(i % 2 == 0 for i in range(cfg.depth))
    model.set_subnet(mask)
    model.set_lambda(1.0)
    x = torch.randn(32, 1, 8, 8)
    random_bn_stats(model, x)
    merged = model.merged()
    assert rel_err(merged(x), model(x)) < RTOL
    before, after = count_layers(model, x), count_layers(merged, x)
    assert after["weight"] < before["weight"] and after["total"] < before["total"]


@pytest.mark.parametrize("cfg", [SMALL_CNN, BOTTLENECK_CNN, ResCNNConfig(channels=8, expand=32, depth=2, kernel=5)])
def test_conv_block_merges_to_single_conv_and_act(cfg):
    model = ResCNN(cfg)
    model.set_subnet((True,) * cfg.depth)
    model.set_lambda(1.0)
    random_bn_stats(model, torch.randn(16, 1, 8, 8))
    block = model.merged().blocks[0]
    k = cfg.kernel
    assert [type(m).__name__ for m in block] == ["Conv2d", "GELU"]
    assert block[0].kernel_size == (k, k) and block[0].padding == (k // 2, k // 2) and block[0].groups == 1


def test_convnext_block_is_depthwise_then_pointwise():
    """The paper's main shape: dw k×k → LN (over channels) → 1×1 expansion → GELU → 1×1 projection, + x."""
    from minillm.prune import ChannelLayerNorm, PrunableConvNeXtBlock
    block = PrunableConvNeXtBlock(8, 32, kernel=7).eval()
    assert block.dw.groups == 8 and block.dw.kernel_size == (7, 7) and block.dw.padding == (3, 3)
    assert (block.pw1.in_channels, block.pw1.out_channels, block.pw2.out_channels) == (8, 32, 8)
    x = torch.randn(2, 8, 9, 9)
    h = block.norm(block.dw(x))
    ref = torch.nn.functional.layer_norm(block.dw(x).permute(0, 2, 3, 1), (8,), block.norm.weight,
                                         block.norm.bias).permute(0, 3, 1, 2)
    assert isinstance(block.norm, ChannelLayerNorm) and rel_err(h, ref) < 1e-6
    with torch.no_grad():
        expected = x + block.pw2(torch.nn.functional.gelu(block.pw1(ref)))
        assert rel_err(block(x), expected) < 1e-6
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        block.norm(torch.randn(2, 8))


def test_merge_refuses_unfinished_or_training_blocks():
    model = ResCNN(SMALL_CNN).eval()
    model.set_subnet((True,) + (False,) * (SMALL_CNN.depth - 1))
    model.set_lambda(0.5)
    with pytest.raises(ValueError, match="λ = 1"):
        model.merged()
    model.set_lambda(1.0)
    model.train()
    with pytest.raises(ValueError, match="eval"):
        model.merged()


def test_lambda_zero_pruned_block_keeps_activation():
    """At λ = 0 the pruned block is non-linear; at λ = 1 it is affine: f(a+b) − f(b) = f(a) − f(0)."""
    block = ResCNN(SMALL_CNN).blocks[0].eval()
    block.pruned = True
    a, b, zero = torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6), torch.zeros(2, 8, 6, 6)
    block.post_act = torch.nn.Identity()  # isolate the inside of the block
    block.lam = 1.0
    assert rel_err(block(a + b) - block(b), block(a) - block(zero)) < 1e-4
    block.lam = 0.0
    assert rel_err(block(a + b) - block(b), block(a) - block(zero)) > 1e-2


def test_set_subnet_and_lambda_validate():
    model = ResCNN(SMALL_CNN)
    with pytest.raises(ValueError, match="blocks"):
        model.set_subnet((True,))
    with pytest.raises(ValueError, match="λ"):
        model.set_lambda(-0.1)
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(2, 3, 8, 8))


def test_lambda_schedule_ramps_then_holds():
    values = [lambda_schedule(t, 100, ramp=0.5) for t in range(100)]
    assert values[0] == 0.0 and values[25] == pytest.approx(0.5) and values[50] == 1.0 and values[-1] == 1.0
    assert all(a <= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="ramp"):
        lambda_schedule(0, 10, ramp=0.0)


def test_sandwich_rule_has_full_random_and_pruned():
    masks = sandwich_subnets(5, num_random=2)(0, random.Random(0))
    assert len(masks) == 4 and masks[0] == (False,) * 5 and masks[-1] == (True,) * 5


def test_genetic_operators_keep_k_pruned():
    rng = random.Random(0)
    for _ in range(50):
        a, b = random_mask(8, 3, rng), random_mask(8, 3, rng)
        assert sum(crossover(a, b, 3, rng)) == 3 and sum(mutate(a, rng)) == 3
    with pytest.raises(ValueError, match="prune"):
        random_mask(4, 5, rng)


def test_genetic_search_finds_exhaustive_optimum():
    """A fitness with a unique best mask: the GA must reach the optimum that enumeration finds."""
    weights = np.array([0.3, -1.0, 2.0, 0.1, 1.5, -0.2, 0.7, 0.05])
    fitness = lambda m: float(weights @ np.array(m, dtype=float))  # noqa: E731
    ga = genetic_search(fitness, 8, 3, SearchConfig(population=8, generations=8, elite=3, seed=0))
    ex = exhaustive_search(fitness, 8, 3)
    assert ga.best == ex.best == (False, False, True, False, True, False, True, False)
    assert len(ga.evaluated) < len(ex.evaluated)  # it did not just enumerate everything
    assert all(a <= b for a, b in zip(ga.history, ga.history[1:]))


def _tiny_data(n=96):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y[:, None, None, None].float() / 3
    return ImageData("synthetic", x, y, x[:32], y[:32], x[:32], y[:32])


def test_training_stages_run_and_merge_exactly():
    data = _tiny_data()
    model = ResCNN(SMALL_CNN)
    cfg = ImageTrainConfig(epochs=2, batch_size=32, lr=3e-3)
    losses = train_image_classifier(model, data, cfg, subnets=sandwich_subnets(model.num_blocks))
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert model.subnet == (False,) * SMALL_CNN.depth  # the sandwich restores the current subnet
    mask = (True, False, True, False)
    train_subnet(model, mask, data, cfg, progressive=True)
    model.eval()
    assert model.subnet == mask and all(b.lam == 1.0 for b in model.blocks)
    assert rel_err(model.merged()(data.x_val), model(data.x_val)) < RTOL
    assert 0.0 <= image_accuracy(model, data.x_val, data.y_val) <= 1.0


def test_recalibrate_bn_restores_momentum_and_sets_stats():
    model = ResCNN(SMALL_CNN)
    x = torch.randn(64, 1, 8, 8) * 3 + 1
    recalibrate_bn(model, x, batches=2, batch_size=32)
    bn = model.stem[1]
    assert bn.momentum == 0.1 and bn.num_batches_tracked == 2
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_digits_splits_are_disjoint_and_standardised():
    data = load_digits_data(seed=0)
    assert data.x_train.shape[1:] == (1, 8, 8)
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 1797
    assert abs(float(data.x_train.mean())) < 1e-4 and abs(float(data.x_train.std()) - 1) < 1e-3
    rows = {tuple(r) for r in data.x_train.flatten(1).numpy().round(4).tolist()}
    overlap = sum(tuple(r) in rows for r in data.x_test.flatten(1).numpy().round(4).tolist())
    assert overlap < 10  # a few digits are pixel-identical duplicates in the source


def test_read_idx_roundtrip(tmp_path):
    import gzip
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype=">i4").tobytes()
    (tmp_path / "a.gz").write_bytes(gzip.compress(header + arr.tobytes()))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "bad")


def test_missing_fashion_mnist_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILLM_FASHION_MNIST", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_dir()
    with pytest.raises(ValueError, match="unknown image data set"):
        load_image_data("cifar")


def test_run_updp_pipeline_on_synthetic_data():
    from minillm.prune.progressive import describe_mask, run_updp
    from minillm.prune.progressive import UPDP_TINY
    import dataclasses
    cfg = dataclasses.replace(UPDP_TINY, baseline=ImageTrainConfig(epochs=1, batch_size=48),
                              supernet=ImageTrainConfig(epochs=1, batch_size=48), subnet=ImageTrainConfig(epochs=1, batch_size=48),
                              search=SearchConfig(population=3, generations=2, elite=2))
    result = run_updp(TinyViT(SMALL_VIT), _tiny_data(), cfg, pruned_blocks=1)
    assert sum(result.search.best) == 1
    assert set(result.merged) == {"direct", "progressive"}
    assert max(result.merge_rel_err.values()) < RTOL
    assert result.accuracy["progressive"] == result.accuracy["progressive_merged"]
    assert result.layers["progressive_merged"]["weight"] == result.layers["baseline"]["weight"] - 1
    assert describe_mask((True, False)) == "P F"
    with pytest.raises(ValueError, match="prune"):
        run_updp(TinyViT(SMALL_VIT), _tiny_data(), cfg, pruned_blocks=0)


@pytest.mark.parametrize("make, cfg", [(ResCNN, "CNN_FULL"), (TinyViT, "VIT_FULL")])
def test_full_profile_models_merge_exactly_on_28px_images(make, cfg):
    from minillm.prune import models
    cfg = getattr(models, cfg)
    model = make(cfg)
    model.set_subnet(tuple(i % 2 == 1 for i in range(cfg.depth)))
    model.set_lambda(1.0)
    x = torch.randn(8, 1, 28, 28)
    random_bn_stats(model, x, steps=2)
    assert rel_err(model.merged()(x), model(x)) < RTOL


def test_train_supernet_and_subnet_fitness():
    from minillm.prune import subnet_fitness, train_supernet
    data = _tiny_data()
    model = ResCNN(SMALL_CNN)
    losses = train_supernet(model, data, ImageTrainConfig(epochs=1, batch_size=48))
    assert len(losses) == 2 and all(b.lam == 1.0 for b in model.blocks)
    fit = subnet_fitness(model, data, calib_batches=1)
    mask = (True, True, False, False)
    score = fit(mask)
    assert 0.0 <= score <= 1.0 and model.subnet == mask
    assert fit(mask) == score  # BN recalibration is seeded: the same mask scores the same


def test_updp_config_follows_the_profile():
    from minillm.core.profile import Profile
    from minillm.prune import UPDP_FULL, UPDP_TINY
    assert Profile("tiny").pick(UPDP_TINY, UPDP_FULL) is UPDP_TINY and UPDP_TINY.data == "digits"
    assert Profile("full").pick(UPDP_TINY, UPDP_FULL) is UPDP_FULL and UPDP_FULL.data == "fashion-mnist"
    assert UPDP_FULL.pruned_blocks < UPDP_FULL.cnn.depth
    smoke = Profile("full", smoke=True).pick(UPDP_TINY, UPDP_FULL)  # nested stage configs are capped too
    assert smoke.baseline.epochs == smoke.subnet.epochs == 1 and smoke.search.generations == 1
    assert smoke.cnn == UPDP_FULL.cnn and smoke.baseline.batch_size == UPDP_FULL.baseline.batch_size
