r"""Pack low-bit integer codes into int32 words in the layout common GPTQ kernels read.

For a layer ``y = x @ Ŵ`` with ``Ŵ`` of shape (K, N) = (in, out) and ``b``-bit codes, each column of
codes is one little-endian *bit stream*: the code of row k occupies stream bits ``b·k .. b·k + b − 1``,
and stream bit j is bit ``j mod 32`` of word ``j // 32``. For b = 2, 4, 8 that is the familiar layout
(``p = 32 / b`` codes per word, row k at bits ``(k mod p)·b`` of word ``k // p``); for b = 3 it is the layout
of GPTQ's ``Quant3Linear``: 32 rows fill exactly 3 words, and rows 10 and 21 straddle a word boundary.

* ``qweight`` int32 (K·b / 32, N);
* ``scales`` (G, N) and ``qzeros`` int32 (G, N·b / 32) (zero points packed along N the same way);
* ``g_idx`` int32 (K,): group of input row k, in the natural row order (act-order makes it non-monotonic).

Reading back: :math:`\hat W_{kn} = s_{g(k),n}\,(q_{kn} - z_{g(k),n})`. A 4-bit layer takes
:math:`K N / 2` bytes plus :math:`G N (2 + 0.5)` bytes of grid (fp16 scales) instead of :math:`2KN`
in fp16. We store the zero point ``z`` itself (some older tools store ``z − 1``). The GPU kernel reads a
regrouped copy of this layout (:mod:`minillm.quant.kernel_layout`); this one is what goes to disk.

Defined in chapter 5.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import TYPE_CHECKING

import torch

from minillm.quant.quantizer import QuantGrid, max_code

if TYPE_CHECKING:  # pragma: no cover
    from minillm.quant.kernel_layout import KernelWeight

PACKABLE_BITS = (2, 3, 4, 8)


def _check_bits(bits: int) -> None:
    if bits not in PACKABLE_BITS:
        raise ValueError(f"bits={bits} cannot be packed; use one of {PACKABLE_BITS}")


def codes_per_word(bits: int) -> int:
    """Codes per int32 word, ``32 / bits``, for the widths that divide 32 (2, 4, 8)."""
    _check_bits(bits)
    if 32 % bits:
        raise ValueError(f"{bits}-bit codes straddle int32 words (32 rows share {bits} words), so there is no whole "
                         f"number of codes per word; use row_multiple({bits}) and packed_rows(K, {bits}) instead")
    return 32 // bits


def row_multiple(bits: int) -> int:
    """The smallest number of rows that fills whole words: 8 for 4 bits, 32 for 3 bits."""
    _check_bits(bits)
    return 32 // gcd(32, bits)


def packed_rows(rows: int, bits: int) -> int:
    """Words per column for ``rows`` codes of ``bits`` bits: ``rows · bits / 32``."""
    if rows % row_multiple(bits):
        raise ValueError(f"{rows} rows of {bits}-bit codes do not fill whole int32 words; pad the dimension to a "
                         f"multiple of {row_multiple(bits)}")
    return rows * bits // 32


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret the low 32 bits of int64 values as two's-complement int32."""
    x = x & 0xFFFFFFFF
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def _stream_positions(rows: int, bits: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each row: its first word, the bit offset inside it, and whether the code spills into the next word."""
    start = torch.arange(rows, device=device) * bits
    word, shift = start // 32, start % 32
    return word, shift, shift + bits > 32


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(K, N) integer codes in [0, 2^b) -> (K·b/32, N) int32 bit streams (see the module docstring)."""
    K, N = codes.shape
    words = packed_rows(K, bits)
    codes = codes.long()
    if codes.numel() and (codes.min() < 0 or codes.max() > max_code(bits)):
        raise ValueError(f"codes must lie in [0, {max_code(bits)}] for {bits} bits")
    word, shift, spill = _stream_positions(K, bits, codes.device)
    out = torch.zeros(words, N, dtype=torch.int64, device=codes.device)
    out.index_add_(0, word, (codes << shift[:, None]) & 0xFFFFFFFF)  # bits never overlap, so add == or
    if spill.any():  # 3 bits: the high part of a straddling code starts the next word
        out.index_add_(0, word[spill] + 1, codes[spill] >> (32 - shift[spill])[:, None])
    return _to_int32(out)  # (K·b/32, N)


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: (K·b/32, N) int32 -> (K, N) int64."""
    _check_bits(bits)
    W, N = packed.shape
    K = W * 32 // bits
    u = packed.long() & 0xFFFFFFFF  # the words as unsigned 32-bit values
    word, shift, spill = _stream_positions(K, bits, packed.device)
    codes = u[word] >> shift[:, None]  # (K, N)
    if spill.any():
        codes[spill] |= u[word[spill] + 1] << (32 - shift[spill])[:, None]
    return codes & max_code(bits)


def pack_cols(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(G, N) codes -> (G, N·b/32) int32, column n at stream bits b·n of its row."""
    return pack_rows(codes.T.contiguous(), bits).T.contiguous()


def unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_rows(packed.T.contiguous(), bits).T.contiguous()


@dataclass
class PackedWeight:
    """A quantized weight in the packed layout (see module docstring for shapes).

    Construction checks shapes and dtypes only (it is cheap); :meth:`for_kernel` also checks ``g_idx``'s values.
    """

    qweight: torch.Tensor  # (K·b/32, N) int32
    scales: torch.Tensor  # (G, N) float
    qzeros: torch.Tensor  # (G, N·b/32) int32
    g_idx: torch.Tensor  # (K,) int32
    bits: int

    def __post_init__(self):
        _check_bits(self.bits)
        for name in ("qweight", "scales", "qzeros", "g_idx"):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"PackedWeight.{name} must be a tensor, got {type(getattr(self, name)).__name__}")
        if self.qweight.dtype != torch.int32 or self.qzeros.dtype != torch.int32:
            raise TypeError(f"qweight and qzeros must be int32 words, got {self.qweight.dtype} and {self.qzeros.dtype}; "
                            "build them with pack_rows / pack_cols (or pack_weight)")
        if not self.scales.is_floating_point() or self.scales.dim() != 2 or self.g_idx.dim() != 1:
            raise ValueError(f"scales must be a floating (G, N) tensor and g_idx a (K,) vector, got scales "
                             f"{tuple(self.scales.shape)} {self.scales.dtype} and g_idx {tuple(self.g_idx.shape)}")
        K, (G, N) = self.g_idx.numel(), self.scales.shape
        want_q = (K * self.bits // 32, N)
        if K % row_multiple(self.bits) or tuple(self.qweight.shape) != want_q:
            raise ValueError(f"qweight of shape {tuple(self.qweight.shape)} does not hold K={K} rows of {self.bits}-bit "
                             f"codes for N={N} columns (expected {want_q}, K a multiple of {row_multiple(self.bits)})")
        if N % row_multiple(self.bits) or tuple(self.qzeros.shape) != (G, N * self.bits // 32):
            raise ValueError(f"qzeros of shape {tuple(self.qzeros.shape)} does not hold (G, N) = {(G, N)} {self.bits}-bit "
                             f"zero points (expected {(G, N * self.bits // 32)}, N a multiple of {row_multiple(self.bits)})")

    @property
    def in_features(self) -> int:
        return self.g_idx.numel()

    @property
    def out_features(self) -> int:
        return self.scales.shape[1]

    def to(self, device: torch.device | str, scale_dtype: torch.dtype | None = None) -> "PackedWeight":
        return PackedWeight(self.qweight.to(device), self.scales.to(device, scale_dtype or self.scales.dtype),
                            self.qzeros.to(device), self.g_idx.to(device), self.bits)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.scales, self.qzeros, self.g_idx))

    def dequantize(self) -> torch.Tensor:
        """Ŵ of shape (K, N) = (in, out) in the dtype of ``scales`` — the pure-torch reference."""
        q = unpack_rows(self.qweight, self.bits)  # (K, N)
        z = unpack_cols(self.qzeros, self.bits)  # (G, N)
        g = self.g_idx.long()
        return (self.scales[g].float() * (q - z[g]).float()).to(self.scales.dtype)

    def for_kernel(self) -> "KernelWeight":
        """The layout the GPU kernel reads: rows regrouped so every group is contiguous (see kernel_layout)."""
        from minillm.quant.kernel_layout import kernel_weight

        return kernel_weight(self)


def pack_weight(Q: torch.Tensor, grid: QuantGrid, scale_dtype: torch.dtype = torch.float32) -> PackedWeight:
    """Pack a quantized weight ``Q`` (N, K) = (out, in), lying on ``grid``, for ``y = x @ Ŵ``.

    Raises ValueError when ``Q`` does not lie on the grid (e.g. the unquantized weight was passed): packing would
    silently round it to nearest.
    """
    if not isinstance(grid, QuantGrid):
        raise TypeError(f"grid must be a QuantGrid (from gptq_quantize, rtn_quantize or grid_from_weight), "
                        f"got {type(grid).__name__}")
    if Q.dim() != 2 or Q.shape[1] != grid.g_idx.numel() or Q.shape[0] != grid.scale.shape[1]:
        raise ValueError(f"Q of shape {tuple(Q.shape)} does not match the grid (G, N) = {tuple(grid.scale.shape)}, "
                         f"K = {grid.g_idx.numel()}; pass the weight (out, in) that this grid quantized")
    if (grid.zero != grid.zero.round()).any():
        raise ValueError("zero points must be integers to be packed; build the grid with find_params / grid_from_weight")
    if not torch.isfinite(Q).all():
        raise ValueError("Q holds NaN or infinite values; quantize a finite weight")
    K, N = Q.shape[1], Q.shape[0]
    for dim, size in (("in_features K", K), ("out_features N", N)):
        if size % row_multiple(grid.bits):
            raise ValueError(f"{dim}={size} cannot be packed at {grid.bits} bits: pad it to a multiple of "
                             f"{row_multiple(grid.bits)}, or keep the dequantized weight")
    codes = grid.codes(Q)  # (N, K)
    scale, _ = grid.column_params()  # (N, K)
    off_grid = ((Q.float() - grid.dequantize(codes)).abs() / scale.abs().clamp_min(1e-30)).max()
    if off_grid > 0.25:
        raise ValueError(f"Q is not on the grid (it lies up to {off_grid:.2f} quantization steps from the nearest "
                         "code); quantize the layer first (gptq_quantize / rtn_quantize) and pack the weight it returns")
    return PackedWeight(qweight=pack_rows(codes.T.contiguous(), grid.bits),
                        scales=grid.scale.to(scale_dtype).contiguous(),
                        qzeros=pack_cols(grid.zero.long(), grid.bits),
                        g_idx=grid.g_idx.to(torch.int32).contiguous(), bits=grid.bits)
