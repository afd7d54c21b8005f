"""The classes and functions chapter 2 re-derives inline compute exactly what the package's compute."""

import torch

from minillm.moe import NoisyTopkRouter, SparseMoE
from minillm.moe.dispatch import DISPATCH_NAMES, dispatch_batched, dispatch_sorted, gate_matrix
from minillm.moe.experts import ExpertBank
from notebook_utils import exec_tagged_cells

NOTEBOOK = "book/ch02_moe.ipynb"


def test_notebook_router_equals_package_router_with_and_without_noise():
    ns = exec_tagged_cells(NOTEBOOK)
    torch.manual_seed(0)
    ours = ns["NoisyTopkRouter"](24, 8, 2)
    pkg = NoisyTopkRouter(24, 8, 2)
    pkg.load_state_dict(ours.state_dict())
    x = torch.randn(64, 24)
    for training in (True, False):
        ours.train(training)
        pkg.train(training)
        torch.manual_seed(5)
        gates, idx = ours(x)
        torch.manual_seed(5)
        r = pkg(x)
        assert torch.equal(idx, r.expert_idx)
        torch.testing.assert_close(gates, gate_matrix(r.expert_idx, r.gates, 8))


def test_notebook_sparse_moe_equals_package_block_for_every_dispatch():
    ns = exec_tagged_cells(NOTEBOOK)
    torch.manual_seed(1)
    ours = ns["SparseMoE"](24, 8, 2, hidden=48).eval()
    pkg = SparseMoE(24, 8, 2, hidden=48).eval()
    pkg.load_state_dict(ours.state_dict())
    x = torch.randn(3, 10, 24)
    for name in DISPATCH_NAMES:
        pkg.dispatch = name
        torch.testing.assert_close(pkg(x), ours(x), atol=1e-5, rtol=0)


def test_notebook_sorted_dispatch_equals_package():
    ns = exec_tagged_cells(NOTEBOOK)
    torch.manual_seed(2)
    experts = torch.nn.ModuleList(ns["Expert"](16, 32) for _ in range(6))
    x = torch.randn(50, 16)
    idx = torch.randint(0, 6, (50, 3))
    gates = torch.softmax(torch.randn(50, 3), -1)
    torch.testing.assert_close(ns["sorted_dispatch"](x, experts, idx, gates),
                               dispatch_sorted(x, experts, idx, gates), atol=1e-6, rtol=1e-6)


def test_notebook_batched_dispatch_equals_package():
    ns = exec_tagged_cells(NOTEBOOK)
    torch.manual_seed(3)
    bank = ExpertBank(6, 16, 32)
    x = torch.randn(50, 16)
    idx = torch.stack([torch.randperm(6)[:3] for _ in range(50)])  # 3 distinct experts per token
    gates = torch.softmax(torch.randn(50, 3), -1)
    torch.testing.assert_close(ns["batched_dispatch"](x, bank, idx, gates),
                               dispatch_batched(x, bank, idx, gates), atol=1e-6, rtol=1e-6)
