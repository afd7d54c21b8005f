"""Chapter 5: the quantizer grid, the Hessian objective, RTN, OBQ and GPTQ agree with their definitions."""

import pytest
import torch

from minillm.quant.gptq import gptq_quantize, gptq_reference
from minillm.quant.hessian import HessianAccumulator, NotPositiveDefiniteError, layer_error, prepare_hessian
from minillm.quant.obq import obq_quantize
from minillm.quant.quantizer import fake_quantize, find_params, grid_from_weight, group_index
from minillm.quant.rtn import rtn_quantize


def layer(N=24, K=64, n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, K, generator=g) * torch.exp(torch.randn(K, generator=g)) + \
        torch.randn(n, 4, generator=g) @ torch.randn(4, K, generator=g)
    return torch.randn(N, K, generator=g) * 0.1, 2.0 / n * X.T @ X, X


def test_asymmetric_grid_spans_min_and_max_and_keeps_zero_exact():
    w = torch.tensor([[-1.0, 0.0, 3.0], [0.5, 1.0, 2.0], [0.0, 0.0, 0.0]])
    scale, zero = find_params(w, bits=4)
    assert torch.allclose(scale, torch.tensor([4 / 15, 2 / 15, 2 / 15]))
    q = fake_quantize(w, scale[:, None], zero[:, None], 4)
    assert q[0, 1] == 0 and (q[2] == 0).all()  # zero maps to exactly zero
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6


def test_symmetric_grid_has_a_fixed_zero_point():
    w = torch.randn(5, 16)
    scale, zero = find_params(w, bits=4, sym=True)
    assert (zero == 8).all()
    assert torch.allclose(scale, 2 * w.abs().max(1).values / 15)


def test_bad_bits_and_groupsize_raise_clear_errors():
    with pytest.raises(ValueError, match="bits=5"):
        find_params(torch.randn(2, 4), bits=5)
    with pytest.raises(ValueError, match="divisor"):
        group_index(100, 32)


def test_grid_codes_round_trip_and_group_shapes():
    W = torch.randn(6, 64)
    grid = grid_from_weight(W, 3, groupsize=16)
    assert grid.scale.shape == (4, 6) and grid.g_idx.tolist() == [k // 16 for k in range(64)]
    Q = grid.dequantize(grid.codes(W))
    assert grid.codes(W).max() <= 7 and torch.equal(grid.dequantize(grid.codes(Q)), Q)


def test_hessian_accumulator_is_the_running_mean_over_batches_and_hooks():
    X = torch.randn(3, 10, 8)
    acc = HessianAccumulator(8)
    for xb in X:
        acc.add_batch(xb)
    flat = X.reshape(-1, 8)
    torch.testing.assert_close(acc.H, 2 / 30 * flat.T @ flat)
    lin = torch.nn.Linear(8, 4)
    acc2, handle = HessianAccumulator.attach(lin)
    lin(X)
    handle.remove()
    torch.testing.assert_close(acc2.H, acc.H)
    with pytest.raises(TypeError, match="nn.Linear"):
        HessianAccumulator.attach(torch.nn.ReLU())


def test_layer_error_is_the_output_error():
    W, H, X = layer()
    Q = rtn_quantize(W, 3)[0]
    out = ((W - Q) @ X.T).pow(2).sum().item() * 2 / X.shape[0]
    assert layer_error(W, Q, H) == pytest.approx(out, rel=1e-4)


def test_non_positive_definite_hessian_names_the_fix():
    W = torch.randn(4, 8)
    H = -torch.eye(8)
    with pytest.raises(NotPositiveDefiniteError, match="percdamp.*calibrat|more data"):
        gptq_quantize(W, H)
    with pytest.raises(ValueError, match=r"\(K, K\)"):
        gptq_quantize(W, torch.eye(7))


def test_dead_columns_are_zeroed_and_do_not_break_the_solve():
    W, H, _ = layer()
    H[5, :] = 0
    H[:, 5] = 0
    Q, _ = gptq_quantize(W, H, 4)
    assert (Q[:, 5] == 0).all() and torch.isfinite(Q).all()
    W2, H2 = prepare_hessian(W, H, 0.0)
    assert H2[5, 5] == 1 and (W2[:, 5] == 0).all()


def test_rtn_rounds_each_weight_to_its_nearest_grid_point():
    W = torch.randn(8, 32)
    Q, grid = rtn_quantize(W, 4, groupsize=8)
    scale, zero = grid.column_params()
    assert ((Q - W).abs() <= scale / 2 + 1e-6).all()
    torch.testing.assert_close(rtn_quantize(Q, 4, groupsize=8)[0], Q, atol=1e-6, rtol=0)  # already on a grid


@pytest.mark.parametrize("groupsize, actorder", [(-1, False), (-1, True), (16, False), (16, True)])
def test_gptq_equals_the_straightforward_reference(groupsize, actorder):
    W, H, _ = layer()
    Qg, gg = gptq_quantize(W, H, 4, groupsize=groupsize, actorder=actorder, blocksize=32)
    Qr, gr = gptq_reference(W, H, 4, groupsize=groupsize, actorder=actorder)
    assert ((Qg - Qr).norm() / Qr.norm()).item() < 1e-5
    assert torch.equal(gg.g_idx, gr.g_idx)
    assert torch.equal(gg.dequantize(gg.codes(Qg)), Qg)  # Q lies on the grid it returns


def test_lazy_batching_is_exact_whatever_the_block_size():
    W, H, _ = layer(K=96)
    Q1, _ = gptq_quantize(W, H, 3, blocksize=96)
    Q2, _ = gptq_quantize(W, H, 3, blocksize=8)
    assert ((Q1 - Q2).norm() / Q1.norm()).item() < 1e-5


def test_sequential_obq_equals_gptq_and_greedy_obq_beats_rtn():
    W, H, _ = layer()
    Qg, _ = gptq_quantize(W, H, 4, blocksize=16)
    Qs, _ = obq_quantize(W, H, 4, order="sequential")
    assert ((Qs - Qg).norm() / Qg.norm()).item() < 1e-5
    Qo, _ = obq_quantize(W, H, 4, order="greedy")
    assert layer_error(W, Qo, H) < layer_error(W, rtn_quantize(W, 4)[0], H)


def test_act_order_groups_follow_the_quantization_order():
    W, H, _ = layer()
    Q, grid = gptq_quantize(W, H, 4, groupsize=16, actorder=True)
    order = torch.argsort(torch.diag(H), descending=True, stable=True)
    assert grid.g_idx[order].tolist() == [j // 16 for j in range(64)]
    Qs, gs = gptq_quantize(W, H, 4, groupsize=16, actorder=True, static_groups=True)
    assert gs.g_idx.tolist() == [k // 16 for k in range(64)] and torch.equal(gs.dequantize(gs.codes(Qs)), Qs)
    with pytest.raises(ValueError, match="multiple"):
        gptq_quantize(W, H, 4, groupsize=16, blocksize=24)


def test_gptq_beats_rtn_on_correlated_inputs():
    W, H, _ = layer(N=32, K=128, n=1024)
    for bits in (3, 4):
        assert layer_error(W, gptq_quantize(W, H, bits)[0], H) < 0.8 * layer_error(W, rtn_quantize(W, bits)[0], H)
