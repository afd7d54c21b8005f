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
  the padding, :math:`E S / (N k)` rows computed per useful row, which grows with imbalance.

What any dispatch must at least pay is the experts' own arithmetic on perfectly balanced, already grouped
tokens — the (E, Nk/E, C) buffer fed straight to the bank (``benchmarks/ch02_moe_dispatch.py`` times it as
the *floor*).

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


def _check(x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor, n_experts: int,
           values: bool = True) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be flattened float tokens of shape (N, C), got "
                         f"{getattr(x, 'dtype', type(x))} of shape {tuple(getattr(x, 'shape', ()))}; use x.view(-1, C)")
    if not isinstance(expert_idx, torch.Tensor) or expert_idx.dtype not in (torch.long, torch.int32):
        raise ValueError(f"expert_idx must be an integer tensor of expert ids, got {getattr(expert_idx, 'dtype', type(expert_idx))}; "
                         "pass the router's Routing.expert_idx (torch.long)")
    if expert_idx.shape != gates.shape or expert_idx.dim() != 2 or expert_idx.size(0) != x.size(0):
        raise ValueError(f"expert_idx and gates must both be (N={x.size(0)}, k), "
                         f"got {tuple(expert_idx.shape)} and {tuple(gates.shape)}; pass the router's Routing fields")
    if not (x.device == expert_idx.device == gates.device):
        raise ValueError(f"x, expert_idx and gates must be on one device, got {x.device}, {expert_idx.device}, "
                         f"{gates.device}; move them with .to(x.device)")
    if values and expert_idx.numel():
        lo, hi = torch.stack(torch.aminmax(expert_idx)).tolist()  # one pass, one sync
        if lo < 0 or hi >= n_experts:
            raise ValueError(f"expert_idx must lie in [0, {n_experts}); got values in [{lo}, {hi}]: "
                             "pass the router's expert_idx for these experts")


def expert_capacity(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ``ceil(capacity_factor · N·k / E)`` (1.0 = exactly the uniform share)."""
    for name, value in (("n_tokens", n_tokens), ("top_k", top_k), ("n_experts", n_experts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer (a count), got {value!r}")
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor must be > 0 (or None for no limit), got {capacity_factor}")
    return max(1, math.ceil(capacity_factor * n_tokens * top_k / n_experts))


def rank_within_expert(flat_expert: torch.Tensor, n_experts: int,
                       counted: torch.Tensor | None = None) -> torch.Tensor:
    """(A,) 0-based position of each assignment among the assignments to the same expert, in list order.

    A running count per expert: the cumulative sum of one-hot rows, read at each assignment's own expert.
    ``counted`` (A,) bool: only those assignments take a position (the others get -1 and count for nobody).
    """
    if not isinstance(flat_expert, torch.Tensor) or flat_expert.dim() != 1 or flat_expert.dtype not in (
            torch.long, torch.int32):
        raise ValueError(f"flat_expert must be a 1-D integer tensor of expert ids, got "
                         f"{getattr(flat_expert, 'dtype', type(flat_expert))} of shape "
                         f"{tuple(getattr(flat_expert, 'shape', ()))}; flatten (N, k) choices with .reshape(-1)")
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
    if not isinstance(expert_idx, torch.Tensor) or expert_idx.dim() != 2:
        raise ValueError(f"expert_idx must be (N, k) expert ids, got shape {tuple(getattr(expert_idx, 'shape', ()))}; "
                         "pass Routing.expert_idx")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive number of slots per expert, got {capacity!r}; "
                         "compute it with expert_capacity(N, k, E, capacity_factor)")
    N, k = expert_idx.shape
    rank_major = expert_idx.t().reshape(-1)  # (k·N,): all first choices, then all second choices
    slot = rank_within_expert(rank_major, n_experts)  # (k·N,) position of each assignment in its expert
    return (slot < capacity).view(k, N).t()  # (N, k)


def gate_matrix(expert_idx: torch.Tensor, gates: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Scatter (N, k) gates into an (N, E) matrix that is zero off each token's chosen experts."""
    if not (isinstance(expert_idx, torch.Tensor) and isinstance(gates, torch.Tensor)) or gates.shape != expert_idx.shape:
        raise ValueError(f"gates must have the shape of expert_idx, got {tuple(getattr(gates, 'shape', ()))} and "
                         f"{tuple(getattr(expert_idx, 'shape', ()))}; pass the gates and expert_idx of one Routing")
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
    count (one cumulative sum of one-hot rows) rather than a sort. Rows are zero-padded up to the busiest
    expert's count S, which is known only once the routing is (a data-dependent size, unlike a capacity);
    padding slots are computed and never read. Results come back by the same flat slot index and are mixed
    as ``Σ_k g_k y_k`` per token, so no scatter-add is needed either. Dropped assignments (``keep`` False) take
    no slot: they write to one spare row that no expert computes, and their gate is zeroed.
    x: (N, C) -> (N, C).
    """
    if not isinstance(bank, ExpertBank):
        raise TypeError(f"dispatch_batched needs the experts' weights stacked in an ExpertBank, got "
                        f"{type(bank).__name__}; convert a list of Expert modules with ExpertBank.from_experts(experts)")
    _check(x, expert_idx, gates, len(bank), values=False)  # the range check is folded into the counts below
    return _batched(x, bank, expert_idx, gates, keep, check_range=True)


def _batched(x: torch.Tensor, bank: ExpertBank, expert_idx: torch.Tensor, gates: torch.Tensor,
             keep: torch.Tensor | None, check_range: bool = False) -> torch.Tensor:
    # The body of dispatch_batched, without the argument checks (SparseMoE's router makes valid routings).
    # Every step is one tensor operation on all assignments at once: at decoding sizes the number of
    # operations, not the arithmetic, is what costs time.
    N, k = expert_idx.shape
    E, C = len(bank), x.size(1)
    flat_expert = expert_idx.reshape(-1)  # (A,), A = N·k; assignment a belongs to token a // k
    one_hot = flat_expert.unsqueeze(1) == bank.expert_ids  # (A, E) bool
    if keep is not None:
        one_hot &= keep.reshape(-1, 1)  # dropped assignments count for nobody
    count = one_hot.cumsum(0)  # (A, E): assignments to each expert so far, this one included
    per_expert = count[-1] if N else count.new_zeros(E)  # (E,) assignments per expert
    if check_range:
        S, total = torch.stack([per_expert.max(), per_expert.sum()]).tolist() if N else (0, 0)
        expected = int(keep.sum()) if keep is not None else N * k
        if total != expected:  # an id outside [0, E) matches no expert id
            lo, hi = torch.stack(torch.aminmax(expert_idx)).tolist()
            raise ValueError(f"expert_idx must lie in [0, {E}); got values in [{lo}, {hi}]: "
                             "pass the router's expert_idx for this bank")
    else:
        S = int(per_expert.max()) if N else 0  # slots per expert: the busiest expert's count
    if S == 0:  # no token, or every assignment dropped: no expert runs
        return x.new_zeros(N, C)
    rank = count.gather(1, flat_expert.unsqueeze(1)).squeeze(1)  # (A,) 1-based rank in its expert
    slot = rank.add_(flat_expert, alpha=S).sub_(1)  # (A,) flat slot e·S + rank - 1 in the (E·S, C) buffer
    spare = keep is not None
    if spare:
        flat_keep = keep.reshape(-1)
        write, read = torch.where(flat_keep, slot, E * S), torch.where(flat_keep, slot, 0)
        gates = apply_keep(gates, keep)
    else:
        write = read = slot
    buffer = x.new_zeros(E * S + spare, C)  # (E·S [+1 spare], C), zero padding
    buffer.index_copy_(0, write, x.unsqueeze(1).expand(N, k, C).reshape(N * k, C))  # token a // k into its slot
    y = bank(buffer[:E * S].view(E, S, C)).view(E * S, C)  # every expert on its row in one batched product
    y_assign = y.index_select(0, read).view(N, k, C)  # (N, k, C) each token's k expert outputs
    return torch.bmm(gates.unsqueeze(1).to(y.dtype), y_assign).squeeze(1)  # (N, C) = Σ_k g_k y_k


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
