r"""Uniform min-max quantization: the grid every method in this chapter rounds onto.

A weight :math:`w` with scale :math:`s` and zero point :math:`z` (both per output channel, or per
group of ``groupsize`` input columns) is stored as the integer code and read back as

.. math::

    q = \mathrm{clamp}\left(\left\lfloor w / s \right\rceil + z,\ 0,\ 2^b - 1\right), \qquad
    \hat w = s\,(q - z).

*Asymmetric* (the default) maps ``[min(w, 0), max(w, 0)]`` onto ``[0, 2^b-1]``; *symmetric* uses
``[-max|w|, max|w|]`` with :math:`z = 2^{b-1}` so zero is exact and only scales need storing.

:class:`QuantGrid` records the grid of one layer: ``scale`` and ``zero`` of shape ``(G, N)`` for
G groups and N output channels, and ``g_idx`` of shape ``(K,)`` naming the group of every input
column — the layout the packed kernel reads.

Defined in chapter 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


def max_code(bits: int) -> int:
    """The largest integer code, ``2**bits - 1``; raises for unsupported widths."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not supported; choose one of {SUPPORTED_BITS}")
    return 2**bits - 1


def check_weight(W: torch.Tensor, what: str = "the weight") -> None:
    """Refuse what no grid can hold: a non-tensor, not 2-D (out, in), not floating, empty, NaN or inf."""
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (out_features, in_features), got {type(W).__name__}; "
                        "pass layer.weight.data")
    if W.dim() != 2 or W.numel() == 0:
        raise ValueError(f"{what} must be a non-empty 2-D (out_features, in_features) tensor, got shape "
                         f"{tuple(W.shape)}; pass an nn.Linear's weight (reshape a conv kernel to (out, -1) first)")
    if not W.is_floating_point():
        raise TypeError(f"{what} must be a floating tensor, got {W.dtype}; convert it with .float()")
    if not torch.isfinite(W).all():
        raise ValueError(f"{what} contains NaN or inf ({int((~torch.isfinite(W)).sum())} entries): no grid can "
                         "hold them; fix the model (reload the checkpoint) before quantizing")


def find_params(w: torch.Tensor, bits: int, sym: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max scale and zero point for each row of ``w`` (rows, cols) -> scale (rows,), zero (rows,).

    The range always contains 0 (so a zero weight stays exactly zero); an all-zero row gets the
    range [-1, 1] instead of a zero scale. With ``sym=True``, s = 2·max|w|/(2^b - 1) and z = 2^(b-1), so the
    codes reach s·(q - z) from -2^b/(2^b - 1)·max|w| to (2^b - 2)/(2^b - 1)·max|w|: the positive end stops at
    14/15 ≈ 0.93 of max|w| at 4 bits, and a largest positive weight is clipped.
    """
    check_weight(w, "find_params' input")
    maxq = max_code(bits)
    w = w.float()
    xmin = w.min(dim=1).values.clamp(max=0)  # (rows,)
    xmax = w.max(dim=1).values.clamp(min=0)
    if sym:
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    if sym:
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes (as floats) ``clamp(round(w / s) + z, 0, 2^b - 1)``; broadcasting shapes."""
    return torch.clamp(torch.round(w / scale) + zero, 0, max_code(bits))


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Real values ``s (q - z)`` of integer codes ``q``."""
    return scale * (q - zero)


def fake_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``w`` onto the grid and read it back: the value a quantized layer computes with."""
    return dequantize(quantize(w, scale, zero, bits), scale, zero)


@dataclass(frozen=True)
class QuantGrid:
    """The grid of one quantized linear layer with weight ``W`` of shape (N, K) = (out, in).

    scale, zero: (G, N) — one scale and zero point per group and output channel
    g_idx: (K,) int64 — group of every input column (non-monotonic after act-order)
    """

    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    bits: int
    sym: bool = False

    def __post_init__(self):
        if self.scale.shape != self.zero.shape or self.scale.dim() != 2:
            raise ValueError(f"scale and zero must both be (G, N), got {tuple(self.scale.shape)} and "
                             f"{tuple(self.zero.shape)}; build the grid with grid_from_weight")
        if self.g_idx.dim() != 1 or (self.g_idx.numel() and int(self.g_idx.max()) >= self.scale.shape[0]):
            raise ValueError("g_idx must be a (K,) vector of group indices smaller than G")
        max_code(self.bits)
        if not torch.isfinite(self.scale).all() or bool((self.scale <= 0).any()):
            raise ValueError("scale must be finite and positive: the grid is corrupt; rebuild it with grid_from_weight")

    @property
    def num_groups(self) -> int:
        return self.scale.shape[0]

    def column_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero expanded to the weight's shape (N, K)."""
        return self.scale[self.g_idx].T, self.zero[self.g_idx].T

    def codes(self, W: torch.Tensor) -> torch.Tensor:
        """Integer codes (N, K) int64 of a weight that lies on (or is rounded onto) this grid."""
        scale, zero = self.column_params()
        return quantize(W.float(), scale, zero, self.bits).long()

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Weight (N, K) float32 from integer codes (N, K)."""
        scale, zero = self.column_params()
        return dequantize(codes.float(), scale, zero)


def group_index(columns: int, groupsize: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``g_idx`` (K,) for contiguous groups: column k belongs to group ``k // groupsize`` (0 when per-channel)."""
    if groupsize == -1:
        return torch.zeros(columns, dtype=torch.long, device=device)
    if groupsize <= 0 or columns % groupsize:
        raise ValueError(f"groupsize={groupsize} must be -1 (per channel) or a positive divisor of the {columns} input columns")
    return torch.arange(columns, device=device) // groupsize


def grid_from_weight(W: torch.Tensor, bits: int, groupsize: int = -1, sym: bool = False) -> QuantGrid:
    """Min-max grid of ``W`` (N, K): per output channel, or per channel and group of input columns."""
    check_weight(W)
    max_code(bits)
    g_idx = group_index(W.shape[1], groupsize, W.device)
    size = W.shape[1] if groupsize == -1 else groupsize
    params = [find_params(W[:, g * size:(g + 1) * size], bits, sym) for g in range(int(g_idx.max()) + 1)]
    scale = torch.stack([p[0] for p in params])  # (G, N)
    zero = torch.stack([p[1] for p in params])
    return QuantGrid(scale, zero, g_idx, bits, sym)
