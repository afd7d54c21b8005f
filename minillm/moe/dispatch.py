r"""Sending tokens to their experts: a dense reference, makeMoE's masked loop, and two fast paths.

A sparse MoE layer computes, for each token :math:`x` with chosen experts :math:`\mathcal{T}(x)` (top-k)
and gate weights :math:`g_e(x)`,

.. math::

    y(x) = \sum_{e \in \mathcal{T}(x)} g_e(x)\, \mathrm{FFN}_e(x).

Four ways to compute the same sum (they agree to float rounding; the tests hold them equal):

* :func:`dispatch_dense` — run *every* expert on *every* token and weight the results by a gate matrix
  that is zero off the top-k: obviously correct, ``E / k`` times the work. The reference.
* :func:`dispatch_masked_loop` — makeMoE's loop: for each expert build a boolean mask of its tokens,
  gather them, run the expert, scatter-add back. Right amount of work, many small ops per expert.
* :func:`dispatch_sorted` — production style: flatten the ``N·k`` (token, expert) assignments, sort them
  by expert once, gather the tokens into one contiguous buffer, run each expert once on its contiguous
  slice, and ``index_add`` the weighted results back. No per-token Python loop, no boolean masks.
* :func:`dispatch_batched` — no per-expert loop at all: give each assignment a slot in its expert's row of
  a padded (E, S, C) buffer (S = the busiest expert's count, at most the capacity), run *all* experts in
  two batched matrix products on the stacked weights of an :class:`~minillm.moe.experts.ExpertBank`, and
  read the results back from the same slots. A fixed number of operations whatever E is; the price is
  the padding, which grows with imbalance.

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

from minillm.moe.experts import ExpertBank

DispatchName = Literal["dense", "masked_loop", "sorted", "batched"]
DISPATCH_NAMES: tuple[str, ...] = ("dense", "masked_loop", "sorted", "batched")


def _check(x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor, n_experts: int) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be flattened tokens of shape (N, C), got {tuple(x.shape)}; use x.view(-1, C)")
    if expert_idx.shape != gates.shape or expert_idx.dim() != 2 or expert_idx.size(0) != x.size(0):
        raise ValueError(f"expert_idx and gates must both be (N={x.size(0)}, k), "
                         f"got {tuple(expert_idx.shape)} and {tuple(gates.shape)}")
    if expert_idx.numel():
        lo, hi = torch.stack(torch.aminmax(expert_idx)).tolist()  # one pass, one sync
        if lo < 0 or hi >= n_experts:
            raise ValueError(f"expert_idx must lie in [0, {n_experts}); got values in [{lo}, {hi}]")


def expert_capacity(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ``ceil(capacity_factor · N·k / E)`` (1.0 = exactly the uniform share)."""
    if capacity_factor <= 0:
        raise ValueError(f"capacity_factor must be > 0 (or None for no limit), got {capacity_factor}")
    return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_experts))


def rank_within_expert(flat_expert: torch.Tensor, n_experts: int,
                       counted: torch.Tensor | None = None) -> torch.Tensor:
    """(A,) 0-based position of each assignment among the assignments to the same expert, in list order.

    A running count per expert: the cumulative sum of one-hot rows, read at each assignment's own expert.
    ``counted`` (A,) bool: only those assignments take a position (the others get -1 and count for nobody).
    """
    one_hot = flat_expert.unsqueeze(1) == torch.arange(n_experts, device=flat_expert.device)  # (A, E) bool
    if counted is not None:
        one_hot = one_hot & counted.unsqueeze(1)
    rank = one_hot.cumsum(0).gather(1, flat_expert.unsqueeze(1)).squeeze(1) - 1  # (A,)
    return rank if counted is None else torch.where(counted, rank, -1)


def capacity_keep_mask(expert_idx: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """(N, k) bool: True where an assignment fits in its expert's ``capacity`` slots.

    Slots are filled choice by choice (every token's first choice, then every second choice), and in
    token order within a choice, so a token loses its second expert before anyone loses a first one.
    """
    N, k = expert_idx.shape
    rank_major = expert_idx.t().reshape(-1)  # (k·N,): all first choices, then all second choices
    slot = rank_within_expert(rank_major, n_experts)  # (k·N,) position of each assignment in its expert
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


def dispatch_batched(x: torch.Tensor, bank: ExpertBank, expert_idx: torch.Tensor, gates: torch.Tensor,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """Fast path without a Python loop over experts: one padded (E, S, C) buffer, two ``bmm`` for all experts.

    Each assignment gets a slot in its expert's row: its rank among that expert's assignments, a running
    count (:func:`rank_within_expert`) rather than a sort. Rows are zero-padded up to the busiest expert's
    count S; padding slots are computed and never read. Results come back by the same (expert, slot)
    index and are mixed as ``Σ_k g_k y_k`` per token, so no scatter-add is needed either. Dropped
    assignments (``keep`` False) take no slot: they share one spare row and their gate is zeroed.
    x: (N, C) -> (N, C).
    """
    if not isinstance(bank, ExpertBank):
        raise TypeError(f"dispatch_batched needs the experts' weights stacked in an ExpertBank, got "
                        f"{type(bank).__name__}; convert a list of Expert modules with ExpertBank.from_experts(experts)")
    _check(x, expert_idx, gates, len(bank))
    N, k = expert_idx.shape
    flat_expert = expert_idx.reshape(-1)  # (A,), A = N·k; assignment a belongs to token a // k
    flat_keep = None if keep is None else keep.reshape(-1)  # (A,)
    slot = rank_within_expert(flat_expert, len(bank), flat_keep)  # (A,) rank within its expert, -1 if dropped
    gates = apply_keep(gates, keep)
    S = int(slot.max()) + 1 if slot.numel() else 0  # slots per expert: the busiest expert's count
    if keep is not None:
        slot = torch.where(flat_keep, slot, S)  # dropped ones share the spare slot S
    buffer = x.new_zeros(len(bank), S + (keep is not None), x.size(1))  # (E, S[+1], C)
    buffer[flat_expert, slot] = x.unsqueeze(1).expand(N, k, x.size(1)).reshape(N * k, x.size(1))  # token a // k
    y = bank(buffer)  # (E, S[+1], C): every expert on its slots in one batched product
    y_assign = y[flat_expert, slot].view(N, k, x.size(1))  # (N, k, C) each token's k expert outputs
    return (gates.unsqueeze(-1) * y_assign).sum(dim=1)  # (N, C) = Σ_k g_k y_k


def apply_keep(gates: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Zero the gates of dropped assignments (the dense, masked and batched paths then add nothing for them)."""
    return gates if keep is None else gates * keep.to(gates.dtype)


def dispatch(name: DispatchName, x: torch.Tensor, experts: Sequence[nn.Module], expert_idx: torch.Tensor,
             gates: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Run the dispatch strategy ``name`` (one of :data:`DISPATCH_NAMES`). x: (N, C) -> (N, C)."""
    if name == "batched":
        return dispatch_batched(x, experts, expert_idx, gates, keep)
    if name == "sorted":
        return dispatch_sorted(x, experts, expert_idx, gates, keep)
    if name == "dense":
        return dispatch_dense(x, experts, expert_idx, apply_keep(gates, keep))
    if name == "masked_loop":
        return dispatch_masked_loop(x, experts, expert_idx, apply_keep(gates, keep))
    raise ValueError(f"unknown dispatch {name!r}; choose one of {DISPATCH_NAMES}")
