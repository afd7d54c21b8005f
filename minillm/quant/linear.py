"""The quantized layer at inference: ``y = x @ Ŵ + b`` straight from packed low-bit weights.

:class:`QuantLinear` holds a packed layer (:mod:`minillm.quant.packing`) and multiplies with the Triton kernel
(:mod:`minillm.quant.triton_matmul`) where it can run, else with the pure-torch fallback, which dequantizes and
multiplies. :func:`to_quant_linear` packs an ``nn.Linear`` whose weight lies on a quantization grid.

Defined in chapter 5.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from minillm.quant.packing import PackedWeight, pack_weight
from minillm.quant.quantizer import QuantGrid


class QuantLinear(nn.Module):
    """``y = x @ Ŵ + b`` from a packed low-bit weight (Triton kernel where it runs, torch otherwise)."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None, backend: str = "auto"):
        super().__init__()
        if backend not in ("auto", "triton", "torch"):
            raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
        self.bits, self.backend = packed.bits, backend
        for name in ("qweight", "scales", "qzeros", "g_idx"):
            self.register_buffer(name, getattr(packed, name))
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.qweight, self.scales, self.qzeros, self.g_idx, self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from minillm.quant import triton_matmul as tm

        use_triton = self.backend == "triton" or (self.backend == "auto" and tm.can_run(x.device))
        y = tm.quant_matmul(x, self.packed) if use_triton else tm.quant_matmul_torch(x, self.packed)
        return y + self.bias if self.bias is not None else y


def to_quant_linear(layer: nn.Linear, grid: QuantGrid, backend: str = "auto") -> QuantLinear:
    """Pack a quantized ``nn.Linear`` (its weight on ``grid``) into a :class:`QuantLinear`."""
    return QuantLinear(pack_weight(layer.weight.data.float(), grid), layer.bias, backend)
