r"""The layout the Triton kernel reads: the packed weight with its rows regrouped so groups are contiguous.

Act-order quantizes rows in a permuted order, so the rows of one group (one scale and zero point) are scattered
over K and ``g_idx`` is non-monotonic. A kernel that follows ``g_idx`` must gather a scale and a zero point for
every row of every tile. Instead, once at load time, we sort the rows by group (a stable sort) and pad each group
to a multiple of 32 rows:

.. math::

    y = x\,\hat W = \sum_k x_k \hat W_{k\cdot} = \sum_{r} x_{\pi(r)}\, \hat W_{\pi(r)\cdot}, \qquad
    \hat W_{\pi(r) n} = s_{g n}\,(q_{\pi(r) n} - z_{g n}) \ \text{ for kernel row } r \text{ of group } g = r // R,

where ``π`` (``row_index``) maps kernel row r to its input row and R (``group_rows``) is the padded group size.
A tile of rows inside one group needs one scale and one zero vector, and the only gather left is of ``x`` (K
values per program, from cache) instead of a scale and zero per weight. A padding row holds its group's zero
point as its code, so q − z = 0 whatever x it reads (its ``row_index`` is 0): no mask is needed.

The on-disk layout (:mod:`minillm.quant.packing`) is unchanged; layers already in natural order with groups of
a multiple of 32 rows keep their ``qweight`` as it is (``row_index`` is None).

Defined in chapter 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minillm.quant.packing import PackedWeight, pack_rows, unpack_cols, unpack_rows

ROW_BLOCK = 32  # rows per packing block: 32 rows of b-bit codes fill exactly b words, for every b


@dataclass(frozen=True)
class KernelWeight:
    """A packed weight regrouped for the kernel.

    qweight: (Kp·b/32, N) int32 — bit streams (as in packing) over the Kp = G·R kernel rows
    scales: (G, N) float; zeros: (G, N) uint8 (unpacked: one load per group, no shifts)
    row_index: (Kp,) int32 input row of each kernel row (0 for padding); None when kernel rows = input rows
    """

    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    row_index: torch.Tensor | None
    bits: int
    group_rows: int
    in_features: int

    @property
    def out_features(self) -> int:
        return self.scales.shape[1]

    @property
    def num_groups(self) -> int:
        return self.scales.shape[0]

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def nbytes(self) -> int:
        """Bytes the kernel reads for the weight (each tensor once)."""
        parts = [self.qweight, self.scales, self.zeros] + ([self.row_index] if self.row_index is not None else [])
        return sum(t.numel() * t.element_size() for t in parts)

    def dequantize(self) -> torch.Tensor:
        """Ŵ (K, N) in input-row order, rebuilt from this layout (a reference for tests)."""
        q = unpack_rows(self.qweight, self.bits)  # (Kp, N)
        g = torch.arange(q.shape[0], device=q.device) // self.group_rows
        w = self.scales[g].float() * (q - self.zeros[g].long()).float()  # (Kp, N)
        if self.row_index is None:
            return w.to(self.scales.dtype)
        out = torch.zeros(self.in_features, w.shape[1], dtype=w.dtype, device=w.device)
        return out.index_add_(0, self.row_index.long(), w).to(self.scales.dtype)  # padding rows add exact zeros


def kernel_weight(packed: PackedWeight) -> KernelWeight:
    """Regroup ``packed`` for the kernel (see the module docstring); call once per layer, at load time."""
    K, G, b = packed.in_features, packed.scales.shape[0], packed.bits
    g = packed.g_idx.long()
    if K and (int(g.min()) < 0 or int(g.max()) >= G):
        raise ValueError(f"g_idx must name groups in [0, {G}), got values in [{int(g.min())}, {int(g.max())}]; "
                         "the packed weight is corrupt or its scales belong to another layer")
    counts = torch.bincount(g, minlength=G)  # (G,) rows per group
    R = max(ROW_BLOCK, -(-int(counts.max()) // ROW_BLOCK) * ROW_BLOCK)  # padded group size, a multiple of 32
    zeros = unpack_cols(packed.qzeros, b).to(torch.uint8).contiguous()  # (G, N)
    natural = bool((counts == R).all()) and torch.equal(g, torch.arange(K, device=g.device) // R)
    if natural:
        return KernelWeight(packed.qweight.contiguous(), packed.scales.contiguous(), zeros, None, b, R, K)
    order = torch.argsort(g, stable=True)  # input rows, grouped (K,)
    sorted_g = g[order]
    first = torch.cumsum(counts, 0) - counts  # (G,) position of each group's first row in `order`
    slot = sorted_g * R + torch.arange(K, device=g.device) - first[sorted_g]  # kernel row of order[i]
    row_index = torch.zeros(G * R, dtype=torch.int32, device=g.device)  # padding reads x[0] ...
    row_index[slot] = order.to(torch.int32)
    codes = zeros.long().repeat_interleave(R, dim=0)  # ... with its code equal to the zero point: q − z = 0
    codes[slot] = unpack_rows(packed.qweight, b)[order]
    return KernelWeight(pack_rows(codes, b), packed.scales.contiguous(), zeros, row_index, b, R, K)
