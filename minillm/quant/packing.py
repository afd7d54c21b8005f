r"""Pack low-bit integer codes into int32 words in the layout common GPTQ kernels read.

For a layer ``y = x @ Ŵ`` with ``Ŵ`` of shape (K, N) = (in, out), ``b``-bit codes and
``p = 32 / b`` codes per word:

* ``qweight`` int32 (K / p, N): code of row k sits in word ``k // p`` at bits ``(k % p)·b``;
* ``scales`` (G, N) and ``qzeros`` int32 (G, N / p) (zero points packed along N the same way);
* ``g_idx`` int32 (K,): group of input row k, so act-order (a permuted quantization order) costs
  nothing at inference beyond a gather.

Reading back: :math:`\hat W_{kn} = s_{g(k),n}\,(q_{kn} - z_{g(k),n})`. A 4-bit layer takes
:math:`K N / 2` bytes plus :math:`G N (2 + 0.5)` bytes of grid (fp16 scales) instead of :math:`2KN`
in fp16. We store the zero point ``z`` itself (some older tools store ``z − 1``). 3-bit codes straddle
word boundaries, so packing supports 2, 4 and 8 bits.

Defined in chapter 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minillm.quant.quantizer import QuantGrid, max_code

PACKABLE_BITS = (2, 4, 8)


def codes_per_word(bits: int) -> int:
    if bits not in PACKABLE_BITS:
        raise ValueError(f"{bits}-bit codes cannot be packed evenly into int32 words; use one of {PACKABLE_BITS} "
                         "(3-bit layers stay unpacked: keep the dequantized weight)")
    return 32 // bits


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret the low 32 bits of int64 values as two's-complement int32."""
    x = x & 0xFFFFFFFF
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(K, N) integer codes in [0, 2^b) -> (K / p, N) int32, row k at bits (k % p)·b of word k // p."""
    per = codes_per_word(bits)
    K, N = codes.shape
    if K % per:
        raise ValueError(f"{K} rows cannot be packed {per} per int32 word; pad K to a multiple of {per}")
    codes = codes.long()
    if codes.min() < 0 or codes.max() > max_code(bits):
        raise ValueError(f"codes must lie in [0, {max_code(bits)}] for {bits} bits")
    shifts = (torch.arange(per, device=codes.device) * bits).view(1, per, 1)
    return _to_int32((codes.view(K // per, per, N) << shifts).sum(dim=1))  # (K/p, N)


def unpack_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: (K / p, N) int32 -> (K, N) int64."""
    per = codes_per_word(bits)
    shifts = (torch.arange(per, device=packed.device) * bits).view(1, per, 1)
    codes = (packed.long()[:, None, :] >> shifts) & max_code(bits)  # (K/p, p, N); sign bits masked off
    return codes.reshape(-1, packed.shape[1])


def pack_cols(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(G, N) codes -> (G, N / p) int32, column n at bits (n % p)·b of word n // p."""
    return pack_rows(codes.T.contiguous(), bits).T.contiguous()


def unpack_cols(packed: torch.Tensor, bits: int) -> torch.Tensor:
    return unpack_rows(packed.T.contiguous(), bits).T.contiguous()


@dataclass
class PackedWeight:
    """A quantized weight in the packed layout (see module docstring for shapes)."""

    qweight: torch.Tensor  # (K/p, N) int32
    scales: torch.Tensor  # (G, N) float
    qzeros: torch.Tensor  # (G, N/p) int32
    g_idx: torch.Tensor  # (K,) int32
    bits: int

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


def pack_weight(Q: torch.Tensor, grid: QuantGrid, scale_dtype: torch.dtype = torch.float32) -> PackedWeight:
    """Pack a quantized weight ``Q`` (N, K) = (out, in), lying on ``grid``, for ``y = x @ Ŵ``."""
    if Q.dim() != 2 or Q.shape[1] != grid.g_idx.numel() or Q.shape[0] != grid.scale.shape[1]:
        raise ValueError(f"Q of shape {tuple(Q.shape)} does not match the grid (G, N) = {tuple(grid.scale.shape)}, "
                         f"K = {grid.g_idx.numel()}")
    if (grid.zero != grid.zero.round()).any():
        raise ValueError("zero points must be integers to be packed")
    codes = grid.codes(Q)  # (N, K)
    return PackedWeight(qweight=pack_rows(codes.T.contiguous(), grid.bits),
                        scales=grid.scale.to(scale_dtype).contiguous(),
                        qzeros=pack_cols(grid.zero.long(), grid.bits),
                        g_idx=grid.g_idx.to(torch.int32).contiguous(), bits=grid.bits)
