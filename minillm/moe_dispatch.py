r"""Sending tokens to their experts: a dense reference, makeMoE's masked loop, and a sorted fast path.

A sparse MoE layer computes, for each token :math:`x` with chosen experts :math:`\mathcal{T}(x)` (top-k)
and gate weights :math:`g_e(x)`,

.. math::

    y(x) = \sum_{e \in \mathcal{T}(x)} g_e(x)\, \mathrm{FFN}_e(x).

Three ways to compute the same sum (they agree to float rounding; the tests hold them equal):

* :func:`dispatch_dense` — run *every* expert on *every* token and weight the results by a gate matrix
  that is zero off the top-k: obviously correct, ``E / k`` times the work. The reference.
* :func:`dispatch_masked_loop` — makeMoE's loop: for each expert build a boolean mask of its tokens,
  gather them, run the expert, scatter-add back. Right amount of work, many small ops per expert.
* :func:`dispatch_sorted` — production style: flatten the ``N·k`` (token, expert) assignments, sort them
  by expert once, gather the tokens into one contiguous buffer, run each expert once on its contiguous
  slice, and ``index_add`` the weighted results back. No per-token Python loop, no boolean masks.

Expert capacity (Switch Transformer): each expert takes at most
:math:`C = \lceil \text{capacity\_factor} \cdot N k / E \rceil` assignments; :func:`capacity_keep_mask`
marks the ones beyond it as dropped (first choices have priority over second choices, then earlier
tokens over later ones). A dropped assignment contributes nothing: the token rides the residual stream.

Defined in chapter 2.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn as nn

DispatchName = Literal["dense", "masked_loop", "sorted"]
DISPATCH_NAMES: tuple[str, ...] = ("dense", "masked_loop", "sorted")


def _check(x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor, n_experts: int) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be flattened tokens of shape (N, C), got {tuple(x.shape)}; use x.view(-1, C)")
    if expert_idx.shape != gates.shape or expert_idx.dim() != 2 or expert_idx.size(0) != x.size(0):
        raise ValueError(f"expert_idx and gates must both be (N={x.size(0)}, k), "
                         f"got {tuple(expert_idx.shape)} and {tuple(gates.shape)}")
    if expert_idx.numel() and (int(expert_idx.min()) < 0 or int(expert_idx.max()) >= n_experts):
        raise ValueError(f"expert_idx must lie in [0, {n_experts}); got values in "
                         f"[{int(expert_idx.min())}, {int(expert_idx.max())}]")


def expert_capacity(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ``ceil(capacity_factor · N·k / E)`` (1.0 = exactly the uniform share)."""
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0 (or None for no limit), got {capacity_factor}")
    return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_experts))


def capacity_keep_mask(expert_idx: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """(N, k) bool: True where an assignment fits in its expert's ``capacity`` slots.

    Slots are filled choice by choice (every token's first choice, then every second choice), and in
    token order within a choice, so a token loses its second expert before anyone loses a first one.
    """
    N, k = expert_idx.shape
    rank_major = expert_idx.t().reshape(-1)  # (k·N,): all first choices, then all second choices
    one_hot = torch.nn.functional.one_hot(rank_major, n_experts)  # (k·N, E)
    slot = (one_hot.cumsum(0) * one_hot).sum(-1) - 1  # (k·N,) position of each assignment in its expert
    return (slot < capacity).view(k, N).t()  # (N, k)


def gate_matrix(expert_idx: torch.Tensor, gates: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Scatter (N, k) gates into an (N, E) matrix that is zero off each token's chosen experts."""
    return torch.zeros(expert_idx.size(0), n_experts, dtype=gates.dtype, device=gates.device).scatter_add(
        1, expert_idx, gates)


def dispatch_dense(x: torch.Tensor, experts: Sequence[nn.Module], expert_idx: torch.Tensor,
                   gates: torch.Tensor) -> torch.Tensor:
    """Reference: every expert on every token, masked by the gate matrix. x: (N, C) -> (N, C)."""
    _check(x, expert_idx, gates, len(experts))
    outputs = torch.stack([expert(x) for expert in experts], dim=1)  # (N, E, C)
    weights = gate_matrix(expert_idx, gates, len(experts))  # (N, E), zero off the top-k
    return (weights.unsqueeze(-1) * outputs).sum(dim=1)  # (N, C)


def dispatch_masked_loop(x: torch.Tensor, experts: Sequence[nn.Module], expert_idx: torch.Tensor,
                         gates: torch.Tensor) -> torch.Tensor:
    """makeMoE's dispatch: one boolean mask, gather and scatter per expert. x: (N, C) -> (N, C)."""
    _check(x, expert_idx, gates, len(experts))
    weights = gate_matrix(expert_idx, gates, len(experts))  # (N, E), as makeMoE's router returns it
    out = torch.zeros_like(x)
    for i, expert in enumerate(experts):
        mask = (expert_idx == i).any(dim=-1)  # (N,) tokens routed to expert i
        if mask.any():
            y = expert(x[mask]) * weights[mask, i].unsqueeze(1)  # (n_i, C)
            out[mask] += y
    return out


def dispatch_sorted(x: torch.Tensor, experts: Sequence[nn.Module], expert_idx: torch.Tensor,
                    gates: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Fast path: sort the (token, expert) assignments by expert, one batched call per expert.

    ``keep`` (N, k), from :func:`capacity_keep_mask`, removes dropped assignments before any work is
    done on them. x: (N, C) -> (N, C).
    """
    _check(x, expert_idx, gates, len(experts))
    N, k = expert_idx.shape
    flat_expert, flat_gate = expert_idx.reshape(-1), gates.reshape(-1)  # (N·k,): assignment a is token a // k
    flat_token = torch.arange(N * k, device=x.device) // k  # (N·k,)
    if keep is not None:
        flat_keep = keep.reshape(-1)
        flat_expert, flat_gate, flat_token = flat_expert[flat_keep], flat_gate[flat_keep], flat_token[flat_keep]
    order = torch.argsort(flat_expert, stable=True)  # (A,) assignments grouped by expert
    token_sorted = flat_token[order]  # (A,)
    counts = torch.bincount(flat_expert, minlength=len(experts)).tolist()  # assignments per expert
    chunks = x[token_sorted].split(counts)  # one contiguous (n_e, C) slice per expert
    ys = [expert(chunk) for expert, chunk in zip(experts, chunks) if chunk.size(0) > 0]
    if not ys:
        return torch.zeros_like(x)
    y_sorted = torch.cat(ys) * flat_gate[order].unsqueeze(1)  # (A, C), weighted by the gates
    return torch.zeros_like(x).index_add(0, token_sorted, y_sorted)  # sum each token's k results


def apply_keep(gates: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Zero the gates of dropped assignments (the dense and masked paths then add nothing for them)."""
    return gates if keep is None else gates * keep.to(gates.dtype)


def dispatch(name: DispatchName, x: torch.Tensor, experts: Sequence[nn.Module], expert_idx: torch.Tensor,
             gates: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Run the dispatch strategy ``name`` ("dense", "masked_loop" or "sorted"). x: (N, C) -> (N, C)."""
    if name == "sorted":
        return dispatch_sorted(x, experts, expert_idx, gates, keep)
    if name == "dense":
        return dispatch_dense(x, experts, expert_idx, apply_keep(gates, keep))
    if name == "masked_loop":
        return dispatch_masked_loop(x, experts, expert_idx, apply_keep(gates, keep))
    raise ValueError(f"unknown dispatch {name!r}; choose one of {DISPATCH_NAMES}")
