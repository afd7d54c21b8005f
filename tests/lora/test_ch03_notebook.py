"""The LoRA layer chapter 3 re-derives inline computes what the package's LoRALinear computes."""

import copy
import math

import torch
from torch import nn

from minillm.lora import LoRAConfig, LoRALinear
from notebook_utils import code_cells

NOTEBOOK = "book/ch03_lora.ipynb"


def _notebook_classes() -> dict:
    """Run the notebook's ``package-twin`` cells with the imports its first cell provides."""
    sources = code_cells(NOTEBOOK, "package-twin")
    assert sources, f"{NOTEBOOK} has no cell tagged 'package-twin'"
    namespace = {"math": math, "torch": torch, "nn": nn}
    for source in sources:
        exec(compile(source, f"{NOTEBOOK}[package-twin]", "exec"), namespace)
    return namespace


def test_notebook_lora_linear_equals_package_lora_linear():
    ns = _notebook_classes()
    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    ours = ns["LoRALinearFromScratch"](copy.deepcopy(base), r=4, alpha=12, dropout=0.0)
    pkg = LoRALinear(copy.deepcopy(base))
    pkg.add_adapter("default", LoRAConfig(r=4, alpha=12))
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(ours(x), base(x), rtol=0, atol=0)  # B = 0: the pretrained output
    assert ours.A.abs().max() <= 1 / math.sqrt(24)  # kaiming-uniform, a = sqrt(5)
    with torch.no_grad():
        ours.B.normal_()
        pkg.lora_A["default"].weight.copy_(ours.A)
        pkg.lora_B["default"].weight.copy_(ours.B)
    torch.testing.assert_close(ours(x), pkg(x))
    ours.merge()
    pkg.merge()
    torch.testing.assert_close(ours.base.weight, pkg.base_layer.weight)
    torch.testing.assert_close(ours(x), pkg(x), atol=1e-5, rtol=1e-5)
    ours.unmerge()
    pkg.unmerge()
    torch.testing.assert_close(ours.base.weight, base.weight, atol=1e-6, rtol=0)
    assert sum(p.requires_grad for p in ours.parameters()) == 2  # A and B only
