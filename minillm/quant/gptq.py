r"""GPTQ: quantize a layer column by column, pushing each rounding error onto the columns not yet quantized.

Quantizing column :math:`i` to :math:`q_i` and updating the remaining weights :math:`F` optimally
(the OBS update, with :math:`H_F^{-1}` the inverse Hessian restricted to those columns) gives

.. math::

    \delta_F = -\frac{w_i - q_i}{[H_F^{-1}]_{ii}}\,(H_F^{-1})_{i,:}, \qquad
    H_{F\setminus i}^{-1} = H_F^{-1} - \frac{(H_F^{-1})_{:,i}\,(H_F^{-1})_{i,:}}{[H_F^{-1}]_{ii}} .

GPTQ :cite:`frantar2023gptq` makes this fast and stable with three changes to OBQ :cite:`frantar2022obc`:

1. **Arbitrary (sequential) order.** Every row uses the same column order, so one :math:`H^{-1}` serves all rows.
2. **Lazy batch updates.** Errors of a block of ``blocksize`` columns are applied to the rest of the matrix
   at once (one matrix product) instead of one rank-1 update per column.
3. **Cholesky reformulation.** Row :math:`i` of :math:`H_F^{-1}` after removing columns :math:`0..i-1`,
   divided by :math:`\sqrt{[H_F^{-1}]_{ii}}`, is row :math:`i` of the upper Cholesky factor :math:`U` of
   :math:`H^{-1}`: computing :math:`U` once replaces all the numerically fragile downdates.

Options: ``groupsize`` (a grid per group of input columns), ``actorder`` (quantize columns by decreasing
:math:`H_{kk}`, recorded in ``g_idx``), ``static_groups`` (group grids fixed from the original weights).
:func:`gptq_reference` is the straightforward algorithm — the update above, column by column — for
checking and timing.

Defined in chapter 5.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from minillm.quant.hessian import NotPositiveDefiniteError, damped_cholesky, inverse_hessian, prepare_hessian
from minillm.quant.quantizer import QuantGrid, check_weight, fake_quantize, find_params, grid_from_weight, group_index, max_code

#: How often :func:`gptq_quantize` retries with ten times more damping when the Cholesky factorization fails.
DAMPING_RETRIES = 3


class DampingRetryWarning(UserWarning):
    """The Hessian needed more damping than asked for; the layer was quantized with the damping named."""


def _check_options(K: int, groupsize: int, blocksize: int, bits: int) -> None:
    max_code(bits)
    group_index(K, groupsize)  # validates groupsize
    if blocksize <= 0:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    if groupsize > 0 and blocksize % groupsize and groupsize % blocksize:
        raise ValueError(f"blocksize={blocksize} and groupsize={groupsize}: one must be a multiple of the other, "
                         "so every group's grid is computed from fully updated weights (e.g. blocksize=128, groupsize=32)")


@contextmanager
def _one_thread(enabled: bool):
    """Run the column loop on one CPU thread: its (N, B) updates are latency-bound small ops that gain
    little from threads, and on a busy machine every threaded op waits for its slowest thread."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _order(H: torch.Tensor, actorder: bool) -> torch.Tensor:
    """Column order: by decreasing H_kk (act-order) or natural."""
    K = H.shape[0]
    return torch.argsort(torch.diag(H), descending=True, stable=True) if actorder else torch.arange(K, device=H.device)


def _grid(scales: list, zeros: list, perm: torch.Tensor, K: int, groupsize: int, actorder: bool,
          static: QuantGrid | None, bits: int, sym: bool) -> QuantGrid:
    if static is not None:
        return static
    if groupsize == -1:
        g_idx = torch.zeros(K, dtype=torch.long, device=perm.device)
    else:
        g_idx = torch.empty(K, dtype=torch.long, device=perm.device)
        g_idx[perm] = torch.arange(K, device=perm.device) // groupsize  # groups are formed in quantization order
    return QuantGrid(torch.stack(scales), torch.stack(zeros), g_idx, bits, sym)


@torch.no_grad()
def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int = 4, groupsize: int = -1, actorder: bool = False,
                  blocksize: int = 128, percdamp: float = 0.01, sym: bool = False,
                  static_groups: bool = False, retries: int = DAMPING_RETRIES) -> tuple[torch.Tensor, QuantGrid]:
    """Quantize ``W`` (N, K) = (out_features, in_features) given its Hessian ``H`` (K, K).

    Returns:
        ``(Q, grid)``: ``Q`` the dequantized weight, float32 of shape (N, K), in the original column order;
        ``grid`` a :class:`~minillm.quant.quantizer.QuantGrid` with ``scale``/``zero`` of shape (G, N)
        (G = 1 per channel, else K / groupsize), and ``g_idx`` (K,) the group of every input column, so that
        ``grid.dequantize(grid.codes(Q))`` reproduces ``Q``.

    When the damped Hessian has no Cholesky factor, the layer is quantized again with ten times more damping
    (at least 0.1, 1, 10 × mean(diag H)), at most ``retries`` times, and a :class:`DampingRetryWarning` names the
    damping that worked.

    Raises:
        NotPositiveDefiniteError: no damping tried has a Cholesky factor (raise ``percdamp`` or add data).
        ValueError: wrong shapes, non-finite values, or incompatible ``groupsize``/``blocksize``.
    """
    check_weight(W)
    damping = percdamp
    for attempt in range(retries + 1):
        try:
            return _gptq(W, H, bits, groupsize, actorder, blocksize, damping, sym, static_groups)
        except NotPositiveDefiniteError as err:
            if attempt == retries or not torch.isfinite(H).all():
                raise NotPositiveDefiniteError(f"{err} (tried percdamp up to {damping:g})") from None
            damping = max(damping, 0.01) * 10
            warnings.warn(f"the Hessian of a {tuple(W.shape)} layer has no Cholesky factor at percdamp={percdamp:g}; "
                          f"retrying with percdamp={damping:g} (calibrate with more tokens to avoid this)",
                          DampingRetryWarning, stacklevel=2)
    raise AssertionError("unreachable")


def _gptq(W: torch.Tensor, H: torch.Tensor, bits: int, groupsize: int, actorder: bool, blocksize: int,
          percdamp: float, sym: bool, static_groups: bool) -> tuple[torch.Tensor, QuantGrid]:
    W, H = prepare_hessian(W, H, percdamp)  # (N, K), (K, K) damped, dead columns fixed
    N, K = W.shape
    _check_options(K, groupsize, blocksize, bits)
    static = grid_from_weight(W, bits, groupsize, sym) if (static_groups and groupsize != -1) else None
    perm = _order(H, actorder)
    W, H = W[:, perm], H[perm][:, perm]
    Hinv = torch.cholesky_inverse(damped_cholesky(H, percdamp))
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)  # (K, K): row i = Hinv row after removing cols < i
    if int(info) != 0:
        raise NotPositiveDefiniteError(f"the inverse Hessian lost positive definiteness (percdamp={percdamp}); "
                                       "increase percdamp (e.g. 0.1) or calibrate with more data")
    Q = torch.zeros_like(W)
    scales, zeros = [], []
    grid = find_params(W, bits, sym) if groupsize == -1 else None  # (scale, zero) in use
    if grid is not None:
        scales, zeros = [grid[0]], [grid[1]]
    for i1 in range(0, K, blocksize):
        i2 = min(i1 + blocksize, K)
        W1 = W[:, i1:i2].clone()  # (N, B) updated column by column
        Q1, E1 = torch.zeros_like(W1), torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]  # (B, B)
        with _one_thread(W.device.type == "cpu"):
            for i in range(i2 - i1):
                col = i1 + i
                if static is not None:
                    g = int(perm[col]) // groupsize
                    grid = static.scale[g], static.zero[g]
                elif groupsize != -1 and col % groupsize == 0:  # a new group: grid from the weights updated so far
                    grid = find_params(W[:, col:col + groupsize] if i == 0 else W1[:, i:i + groupsize], bits, sym)
                    scales.append(grid[0])
                    zeros.append(grid[1])
                w = W1[:, i]  # (N,)
                q = fake_quantize(w, grid[0], grid[1], bits)
                Q1[:, i] = q
                err = (w - q) / U1[i, i]  # (N,)
                W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)  # OBS update inside the block
                E1[:, i] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]  # lazy batch update of all later columns: (N, B) @ (B, K - i2)
    Q = Q[:, torch.argsort(perm)]
    return Q, _grid(scales, zeros, perm, K, groupsize, actorder, static, bits, sym)


@torch.no_grad()
def gptq_reference(W: torch.Tensor, H: torch.Tensor, bits: int = 4, groupsize: int = -1, actorder: bool = False,
                   percdamp: float = 0.01, sym: bool = False) -> tuple[torch.Tensor, QuantGrid]:
    """The straightforward algorithm: one column at a time, explicit ``H⁻¹`` downdates, no blocks, no Cholesky.

    Same return as :func:`gptq_quantize`. Cost: K rank-1 updates of W and of ``H⁻¹`` — O(K²(N + K)) memory
    traffic with no matrix-matrix products, and the downdates accumulate rounding error.
    """
    check_weight(W)
    W, H = prepare_hessian(W, H, percdamp)
    N, K = W.shape
    _check_options(K, groupsize, K, bits)
    perm = _order(H, actorder)
    W, H = W[:, perm], H[perm][:, perm]
    Hinv = inverse_hessian(H, percdamp)  # (K, K), downdated in place
    Q = torch.zeros_like(W)
    scales, zeros = [], []
    if groupsize == -1:
        scale, zero = find_params(W, bits, sym)
        scales, zeros = [scale], [zero]
    for i in range(K):
        if groupsize != -1 and i % groupsize == 0:
            scale, zero = find_params(W[:, i:i + groupsize], bits, sym)
            scales.append(scale)
            zeros.append(zero)
        q = fake_quantize(W[:, i], scale, zero, bits)
        Q[:, i] = q
        d = Hinv[i, i]
        err = (W[:, i] - q) / d  # (N,)
        W[:, i + 1:].addr_(err, Hinv[i, i + 1:], alpha=-1.0)  # w_F -= err · H⁻¹[i, F]
        Hinv[i + 1:, i + 1:].addr_(Hinv[i + 1:, i], Hinv[i, i + 1:], alpha=-1.0 / float(d))  # remove column i
    Q = Q[:, torch.argsort(perm)]
    return Q, _grid(scales, zeros, perm, K, groupsize, actorder, None, bits, sym)
