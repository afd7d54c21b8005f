"""The quantized layer at inference: ``y = x @ Ŵ + b`` straight from packed low-bit weights.

:class:`QuantLinear` holds a packed layer (:mod:`minillm.quant.packing`) and multiplies with the Triton kernel
(:mod:`minillm.quant.triton_matmul`) where it can run, else with the pure-torch fallback, which dequantizes and
multiplies. :func:`to_quant_linear` packs an ``nn.Linear`` whose weight lies on a quantization grid.

Its buffers (``qweight``, ``scales``, ``qzeros``, ``g_idx``) are the on-disk layout, so ``state_dict`` is what
common GPTQ tools read. The kernel reads a regrouped copy (:mod:`minillm.quant.kernel_layout`) that the layer
builds on its first kernel call and rebuilds whenever a buffer was replaced, moved or modified in place (e.g. by
``load_state_dict`` or ``.to()``); the copy is never saved.

Defined in chapter 5.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from minillm.quant.kernel_layout import KernelWeight
from minillm.quant.packing import PackedWeight, pack_weight
from minillm.quant.quantizer import QuantGrid

BACKENDS = ("auto", "triton", "torch")
_BUFFERS = ("qweight", "scales", "qzeros", "g_idx")


class QuantLinear(nn.Module):
    """``y = x @ Ŵ + b`` from a packed low-bit weight (Triton kernel where it runs, torch otherwise)."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None, backend: str = "auto"):
        super().__init__()
        if not isinstance(packed, PackedWeight):
            raise TypeError(f"QuantLinear takes a PackedWeight, got {type(packed).__name__}; build one with "
                            "pack_weight(Q, grid), or use to_quant_linear(layer, grid) for an nn.Linear")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
        if bias is not None and tuple(bias.shape) != (packed.out_features,):
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not match out_features={packed.out_features}; "
                             "pass the bias of the layer that was quantized")
        _check_values(packed)
        self.bits, self.backend = packed.bits, backend
        for name in _BUFFERS:
            self.register_buffer(name, getattr(packed, name))
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self._kernel: KernelWeight | None = None
        self._kernel_key: tuple | None = None

    @property
    def in_features(self) -> int:
        return self.g_idx.numel()

    @property
    def out_features(self) -> int:
        return self.scales.shape[1]

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.qweight, self.scales, self.qzeros, self.g_idx, self.bits)

    def kernel_weight(self) -> KernelWeight:
        """The regrouped layout the kernel reads, built once and kept until a buffer changes."""
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in (getattr(self, n) for n in _BUFFERS))
        if self._kernel is None or key != self._kernel_key:
            self._kernel, self._kernel_key = self.packed.for_kernel(), key
        return self._kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from minillm.quant import triton_matmul as tm

        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, this QuantLinear expects {self.in_features}; pass "
                             f"inputs whose last dimension is {self.in_features} (the layer's in_features)")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating tensor, got {x.dtype}; convert it (e.g. x.float() or x.half())")
        use_triton = self.backend == "triton" or (self.backend == "auto" and tm.can_run(x.device))
        y = tm.quant_matmul(x, self.kernel_weight()) if use_triton else tm.quant_matmul_torch(x, self.packed)
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        groups = self.scales.shape[0]
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"groups={groups}, bias={self.bias is not None}, backend={self.backend!r}")


def _check_values(packed: PackedWeight) -> None:
    """Once per layer: values a corrupt file could hold that shapes do not reveal."""
    G = packed.scales.shape[0]
    g = packed.g_idx
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= G):
        raise ValueError(f"g_idx names groups outside [0, {G}) (values {int(g.min())}..{int(g.max())}): the packed "
                         "weight is corrupt or its scales belong to another layer; re-pack it with pack_weight")
    if not torch.isfinite(packed.scales).all():
        raise ValueError("scales hold NaN or infinite values: the packed weight is corrupt; re-pack it with pack_weight")


def to_quant_linear(layer: nn.Linear, grid: QuantGrid, backend: str = "auto") -> QuantLinear:
    """Pack a quantized ``nn.Linear`` (its weight on ``grid``) into a :class:`QuantLinear`."""
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"to_quant_linear packs an nn.Linear, got {type(layer).__name__}; quantize and pack only the "
                        "linear layers (e.g. minillm.quant.calibrate finds them), leave other modules as they are")
    return QuantLinear(pack_weight(layer.weight.data.float(), grid), layer.bias, backend)
