r"""Optimal Brain Quantization (OBQ): quantize one weight at a time, the one that hurts least, row by row.

The layer objective :math:`\mathrm{tr}((W-\hat W)H(W-\hat W)^\top)` splits into independent rows.
For one row :math:`w` with unquantized set :math:`F`, OBQ :cite:`frantar2022obc` (after Optimal Brain
Surgeon) repeatedly

.. math::

    p = \arg\min_{p \in F} \frac{(q(w_p) - w_p)^2}{[H_F^{-1}]_{pp}}, \qquad
    \delta_F = -\frac{w_p - q(w_p)}{[H_F^{-1}]_{pp}}\,(H_F^{-1})_{:,p}, \qquad
    H_{F\setminus p}^{-1} = H_F^{-1} - \frac{(H_F^{-1})_{:,p}(H_F^{-1})_{p,:}}{[H_F^{-1}]_{pp}}:

it quantizes the weight whose rounding costs least, moves the others to compensate, and removes
row and column :math:`p` from the inverse Hessian (Gaussian elimination of one variable). Each row
has its own order, hence its own :math:`H^{-1}`: :math:`O(N K^3)` time. Forced into the same
column order for every row (``order="sequential"``) it becomes GPTQ — which is how this chapter
verifies :func:`~minillm.quant.gptq.gptq_quantize`.

Defined in chapter 5.
"""

from __future__ import annotations

from typing import Literal

import torch
from tqdm import tqdm

from minillm.quant.hessian import inverse_hessian, prepare_hessian
from minillm.quant.quantizer import QuantGrid, check_weight, fake_quantize, find_params, max_code


@torch.no_grad()
def obq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int = 4, sym: bool = False,
                 order: Literal["greedy", "sequential"] = "greedy", percdamp: float = 0.01,
                 max_batch_bytes: int = 1 << 28, progress: bool = False) -> tuple[torch.Tensor, QuantGrid]:
    """OBQ of ``W`` (N, K) with per-output-channel min-max grids -> ``(Q (N, K) float32, grid)``.

    Rows are processed in batches whose inverse Hessians (R, K, K) fit in ``max_batch_bytes``.
    ``order="greedy"`` is OBQ; ``order="sequential"`` quantizes columns 0, 1, ..., K-1 in every row.
    """
    if order not in ("greedy", "sequential"):
        raise ValueError(f"order must be 'greedy' or 'sequential', got {order!r}")
    check_weight(W)
    max_code(bits)
    W, H = prepare_hessian(W, H, percdamp)  # (N, K), (K, K)
    N, K = W.shape
    scale, zero = find_params(W, bits, sym)  # (N,) each: the grid is fixed before any update
    Hinv0 = inverse_hessian(H, percdamp)  # (K, K)
    Q = torch.empty_like(W)
    rows_per_batch = max(1, min(N, max_batch_bytes // (4 * K * K)))
    for r0 in tqdm(range(0, N, rows_per_batch), desc=f"OBQ ({order})", disable=not progress):
        r1 = min(r0 + rows_per_batch, N)
        R = r1 - r0
        w = W[r0:r1].clone()  # (R, K)
        s, z = scale[r0:r1, None], zero[r0:r1, None]  # (R, 1)
        Hinv = Hinv0.expand(R, K, K).clone()  # (R, K, K): one inverse Hessian per row
        done = torch.zeros(R, K, dtype=torch.bool, device=W.device)
        rows = torch.arange(R, device=W.device)
        for step in range(K):
            q_all = fake_quantize(w, s, z, bits)  # (R, K)
            if order == "greedy":
                cost = (w - q_all) ** 2 / Hinv.diagonal(dim1=1, dim2=2)
                p = cost.masked_fill(done, float("inf")).argmin(dim=1)  # (R,)
            else:
                p = torch.full((R,), step, dtype=torch.long, device=W.device)
            d = Hinv[rows, p, p]  # (R,)
            h = Hinv[rows, p, :]  # (R, K): row p = column p (H⁻¹ is symmetric)
            q_p = q_all[rows, p]
            err = (w[rows, p] - q_p) / d
            w -= err[:, None] * h  # compensate with the remaining weights
            w[rows, p] = q_p  # exact, rather than up to rounding
            Hinv -= h[:, :, None] * h[:, None, :] / d[:, None, None]  # eliminate variable p
            done[rows, p] = True
        Q[r0:r1] = fake_quantize(w, s, z, bits)  # idempotent on the grid; removes drift of fixed weights
    return Q, QuantGrid(scale[None], zero[None], torch.zeros(K, dtype=torch.long, device=W.device), bits, sym)
