"""Chapter 2: experts, routers, auxiliary losses, capacity and the four dispatch strategies."""

from __future__ import annotations

import math

import pytest
import torch

from minillm.moe import (Expert, ExpertBank, NoisyTopkRouter, SparseMoE, TopkRouter, expert_fractions, load_balancing_loss,
                         router_z_loss)
from minillm.moe.dispatch import (DISPATCH_NAMES, capacity_keep_mask, dispatch, dispatch_batched, dispatch_dense,
                                  dispatch_masked_loop, dispatch_sorted, expert_capacity, gate_matrix)

C, E, K = 16, 8, 2


def make_experts(seed: int = 0, hidden: int = 32) -> ExpertBank:
    torch.manual_seed(seed)
    return ExpertBank(E, C, hidden)


def test_seeded_bank_holds_what_a_seeded_list_of_experts_holds_and_computes_the_same():
    torch.manual_seed(0)
    separate = torch.nn.ModuleList(Expert(C, 32) for _ in range(E))
    bank = make_experts(seed=0)
    assert torch.equal(bank.w1, torch.stack([e.fc1.weight for e in separate]))
    assert torch.equal(bank.b2, torch.stack([e.fc2.bias for e in separate]))
    x = torch.randn(5, C)
    for e in range(E):
        torch.testing.assert_close(bank[e](x), separate[e](x), atol=0, rtol=0)
    assert len(bank) == E and len(list(bank)) == E
    assert bank.params_per_expert == sum(p.numel() for p in separate[0].parameters())
    with pytest.raises(IndexError, match="out of range"):
        bank[E]


def test_bank_loads_per_expert_state_dicts_and_runs_all_experts_in_one_call():
    torch.manual_seed(1)
    separate = torch.nn.ModuleList(Expert(C, 24) for _ in range(E))
    bank = ExpertBank(E, C, 24)
    bank.load_state_dict(separate.state_dict())  # makeMoE's keys: "{e}.fc1.weight", ...
    slots = torch.randn(E, 3, C)
    expected = torch.stack([separate[e](slots[e]) for e in range(E)])  # (E, 3, C)
    torch.testing.assert_close(bank(slots), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ExpertBank.from_experts(separate)(slots), expected, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(8, S, 16\)"):
        bank(torch.randn(3, C))


def test_topk_router_picks_best_and_normalises():
    torch.manual_seed(0)
    router = TopkRouter(C, E, K)
    x = torch.randn(50, C)
    r = router(x)
    assert r.expert_idx.shape == r.gates.shape == (50, K)
    torch.testing.assert_close(r.gates.sum(-1), torch.ones(50))
    expected = router.route(x).topk(K, dim=-1).indices
    assert torch.equal(r.expert_idx, expected)
    assert (r.gates[:, 0] >= r.gates[:, 1]).all()  # best first


def test_gates_equal_softmax_over_sparse_logits():
    """makeMoE's formulation: softmax over logits with -inf off the top-k gives the same weights."""
    torch.manual_seed(1)
    router = TopkRouter(C, E, K)
    x = torch.randn(20, C)
    r = router(x)
    logits = router.route(x)
    sparse = torch.full_like(logits, float("-inf")).scatter(1, r.expert_idx, logits.gather(1, r.expert_idx))
    torch.testing.assert_close(gate_matrix(r.expert_idx, r.gates, E), torch.softmax(sparse, -1))


def test_noisy_router_noise_only_in_training():
    torch.manual_seed(0)
    router = NoisyTopkRouter(C, E, K)
    x = torch.randn(200, C)
    router.train()
    a, b = router(x), router(x)
    assert not torch.equal(a.gates, b.gates)  # noise differs between calls
    router.eval()
    c, d = router(x), router(x)
    assert torch.equal(c.gates, d.gates) and torch.equal(c.expert_idx, d.expert_idx)
    assert torch.equal(c.expert_idx, router.route(x).topk(K, -1).indices)  # eval = clean top-k
    router.eval_noise = True  # makeMoE's behaviour: random at evaluation too
    assert not torch.equal(router(x).gates, router(x).gates)


def test_noise_scale_is_learned_through_softplus():
    torch.manual_seed(0)
    router = NoisyTopkRouter(C, E, K).train()
    r = router(torch.randn(64, C))
    (r.gates * torch.randn_like(r.gates)).sum().backward()
    assert router.noise.weight.grad is not None and router.noise.weight.grad.abs().sum() > 0


def test_router_rejects_bad_arguments():
    with pytest.raises(ValueError, match="top_k"):
        TopkRouter(C, E, E + 1)
    with pytest.raises(ValueError, match=r"flattened tokens \(N, 16\)"):
        TopkRouter(C, E, K)(torch.randn(2, 3, C))


def test_load_balancing_loss_is_one_when_uniform_and_e_when_collapsed():
    n = 64
    idx = torch.arange(n * K).remainder(E).view(n, K)  # every expert gets n·k/E assignments
    probs = torch.full((n, E), 1.0 / E)
    assert load_balancing_loss(probs, idx).item() == pytest.approx(1.0)
    collapsed = torch.zeros(n, K, dtype=torch.long)
    one_hot = torch.zeros(n, E)
    one_hot[:, 0] = 1.0
    assert load_balancing_loss(one_hot, collapsed).item() == pytest.approx(E)
    assert expert_fractions(idx, E).sum().item() == pytest.approx(1.0)


def test_load_balancing_gradient_moves_probability_off_the_busy_expert():
    logits = torch.zeros(10, E, requires_grad=True)
    idx = torch.zeros(10, K, dtype=torch.long)  # everyone chose expert 0
    load_balancing_loss(torch.softmax(logits, -1), idx).backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


def test_router_z_loss_matches_definition():
    torch.manual_seed(0)
    logits = torch.randn(30, E) * 3
    expected = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 30
    assert router_z_loss(logits).item() == pytest.approx(expected, rel=1e-5)


def test_capacity_prefers_first_choices_then_earlier_tokens():
    assert expert_capacity(n_tokens=10, top_k=2, n_experts=4, capacity_factor=1.0) == 5
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_capacity(10, 2, 4, 0.0)
    idx = torch.tensor([[0, 1], [0, 1], [1, 0], [0, 2]])  # expert 0: first choice of tokens 0, 1, 3
    keep = capacity_keep_mask(idx, n_experts=3, capacity=2)
    # expert 0: tokens 0, 1 (first choices) fill it; token 3's first choice and token 2's second are dropped.
    # expert 1: token 2's first choice, then token 0's second; token 1's second choice is dropped.
    expected = torch.tensor([[True, True], [True, False], [True, False], [False, True]])
    assert torch.equal(keep, expected)


@pytest.mark.parametrize("n_tokens", [1, 7, 64])
def test_four_dispatches_agree(n_tokens):
    experts = make_experts()
    torch.manual_seed(3)
    x = torch.randn(n_tokens, C)
    r = TopkRouter(C, E, K)(x)
    ref = dispatch_dense(x, experts, r.expert_idx, r.gates)
    torch.testing.assert_close(dispatch_masked_loop(x, experts, r.expert_idx, r.gates), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(dispatch_sorted(x, experts, r.expert_idx, r.gates), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(dispatch_batched(x, experts, r.expert_idx, r.gates), ref, atol=1e-5, rtol=0)


def test_per_expert_dispatches_accept_a_list_of_expert_modules_and_batched_asks_for_a_bank():
    torch.manual_seed(2)
    separate = torch.nn.ModuleList(Expert(C, 32) for _ in range(E))
    x = torch.randn(9, C)
    idx = torch.randint(0, E, (9, K))
    gates = torch.softmax(torch.randn(9, K), -1)
    bank = ExpertBank.from_experts(separate)
    torch.testing.assert_close(dispatch_sorted(x, separate, idx, gates), dispatch_batched(x, bank, idx, gates),
                               atol=1e-6, rtol=1e-6)
    with pytest.raises(TypeError, match="ExpertBank.from_experts"):
        dispatch_batched(x, separate, idx, gates)


@pytest.mark.parametrize("fast", ["sorted", "batched"])
@pytest.mark.parametrize("capacity", [None, 6])
def test_fast_dispatch_gradients_match_dense_reference(fast, capacity):
    experts = make_experts()
    torch.manual_seed(4)
    x = torch.randn(40, C, requires_grad=True)
    idx = torch.randint(0, E, (40, K))
    gates = torch.softmax(torch.randn(40, K), -1).requires_grad_(True)
    keep = None if capacity is None else capacity_keep_mask(idx, E, capacity)
    if keep is not None:
        assert not keep.all()  # some assignments really are dropped
    grads = []
    for name in ("dense", fast):
        for p in [x, gates, *experts.parameters()]:
            p.grad = None
        (dispatch(name, x, experts, idx, gates, keep) ** 2).sum().backward()
        grads.append([x.grad.clone(), gates.grad.clone()] + [p.grad.clone() for p in experts.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dispatch_with_capacity_agrees_and_skips_dropped():
    experts = make_experts()
    torch.manual_seed(5)
    x = torch.randn(32, C)
    idx = torch.zeros(32, K, dtype=torch.long)
    idx[:, 1] = torch.randint(1, E, (32,))  # every first choice is expert 0: it overflows
    gates = torch.softmax(torch.randn(32, K), -1)
    keep = capacity_keep_mask(idx, E, capacity=expert_capacity(32, K, E, 1.0))
    assert keep[:, 0].sum() == 8 and not keep[8:, 0].any()
    outs = {name: dispatch(name, x, experts, idx, gates, keep) for name in DISPATCH_NAMES}
    for name in ("masked_loop", "sorted", "batched"):
        torch.testing.assert_close(outs[name], outs["dense"], atol=1e-5, rtol=0)
    alone = experts[int(idx[20, 1])](x[20:21]) * gates[20, 1]  # token 20 keeps only its second expert
    torch.testing.assert_close(outs["sorted"][20:21], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(outs["batched"][20:21], alone, atol=1e-5, rtol=0)
    nothing_kept = torch.zeros_like(keep)
    assert dispatch_batched(x, experts, idx, gates, nothing_kept).abs().max() == 0


def test_dispatch_rejects_bad_input():
    experts = make_experts()
    x = torch.randn(4, C)
    gates = torch.ones(4, K) / K
    with pytest.raises(ValueError, match=r"flattened float tokens of shape \(N, C\)"):
        dispatch_sorted(x.view(2, 2, C), experts, torch.zeros(4, K, dtype=torch.long), gates)
    with pytest.raises(ValueError, match="expert_idx must lie"):
        dispatch_sorted(x, experts, torch.full((4, K), E), gates)
    with pytest.raises(ValueError, match="unknown dispatch"):
        dispatch("fast", x, experts, torch.zeros(4, K, dtype=torch.long), gates)


def test_sparse_moe_layer_strategies_agree_and_report_stats():
    torch.manual_seed(6)
    layer = SparseMoE(C, E, K, hidden=32, capacity_factor=1.0).eval()
    x = torch.randn(3, 20, C)
    outs = []
    for name in DISPATCH_NAMES:
        layer.dispatch = name
        outs.append(layer(x))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=0)
    stats = layer.stats
    assert stats.load.shape == (E,) and stats.load.sum().item() == pytest.approx(1.0)
    assert 0.0 <= stats.dropped_fraction < 1.0
    assert stats.balance_loss.item() >= 1.0 - 1e-6  # E·Σ f·P is minimised (=1) by uniform routing


def test_sparse_moe_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown dispatch"):
        SparseMoE(C, E, K, dispatch="fast")
    with pytest.raises(ValueError, match="capacity_factor"):
        SparseMoE(C, E, K, capacity_factor=-1.0)
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        SparseMoE(C, E, K)(torch.randn(4, C))
