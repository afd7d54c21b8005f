r"""The sparse mixture-of-experts layer: route each token to k of E experts and mix their outputs.

With a router's choice :math:`\mathcal{T}(x)` (top-k) and gates :math:`g_e(x)`
(:mod:`minillm.moe.router`), the layer outputs

.. math::

    y = \sum_{e \in \mathcal{T}(x)} g_e(x)\,\mathrm{FFN}_e(x),

computed by one of the dispatch strategies of :mod:`minillm.moe.dispatch`, with the experts' weights stacked
in an :class:`~minillm.moe.experts.ExpertBank`. :class:`MoEStats` exposes the auxiliary losses and the load of
each call, computed only when read.

**Capacity applies in training only** (unless ``capacity_in_eval=True``): with a capacity, whether a token keeps its
experts depends on how many *other* tokens of the same call chose them, so in evaluation a token's output would
depend on its batch-mates — the loss on a sequence would change with the evaluation batch size, and decoding with a
KV cache (a few tokens per call) would route differently from one forward pass over the whole text.

Defined in chapter 2. The language model built from it is :mod:`minillm.moe.model`.
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn as nn

from minillm.moe.dispatch import (DISPATCH_NAMES, DispatchName, _batched, capacity_keep_mask, dispatch,
                                  expert_capacity)
from minillm.moe.experts import ActivationName, ExpertBank
from minillm.moe.router import NoisyTopkRouter, Routing, TopkRouter, _balance, _fractions, router_z_loss


class SparseMoE(nn.Module):
    """Drop-in replacement for a transformer MLP: route each token to ``top_k`` of ``n_experts``.

    Args:
        hidden: width of each expert's MLP (makeMoE: 4·n_embd).
        noisy: use :class:`NoisyTopkRouter` (else :class:`TopkRouter`).
        capacity_factor: None for no limit; else each expert takes at most
            ``ceil(capacity_factor · N·k / E)`` assignments per call and drops the rest — in training only,
            unless ``capacity_in_eval`` (makeMoE's capacity variant and Switch Transformer also drop at inference).
        activation: the experts' nonlinearity, "relu" (makeMoE) or "gelu" (chapter 1's GPT).
        dispatch: "batched" (fastest: one batched product for all experts), "sorted" (one call per expert),
            "masked_loop" (makeMoE) or "dense" (reference) — the same function, four ways.

    The experts' weights live stacked in an :class:`~minillm.moe.experts.ExpertBank` (``self.experts``);
    ``self.experts[e]`` is expert e, and makeMoE-style state dicts with per-expert keys load into it.

    After each forward, ``self.stats`` holds this call's balance loss, z-loss, per-expert load and
    dropped fraction; the language model adds the losses to its objective.
    """

    def __init__(self, n_embd: int, n_experts: int = 8, top_k: int = 2, hidden: int | None = None,
                 dropout: float = 0.0, noisy: bool = True, capacity_factor: float | None = None,
                 dispatch: DispatchName = "batched", eval_noise: bool = False,
                 activation: ActivationName = "relu", capacity_in_eval: bool = False):
        super().__init__()
        if dispatch not in DISPATCH_NAMES:
            raise ValueError(f"unknown dispatch {dispatch!r}; choose one of {DISPATCH_NAMES}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 or None (no limit), got {capacity_factor}; "
                             "1.0 gives each expert exactly its uniform share, Switch Transformer uses 1.25")
        self.n_embd, self.n_experts, self.top_k = n_embd, n_experts, top_k
        self.capacity_factor, self.dispatch, self.capacity_in_eval = capacity_factor, dispatch, capacity_in_eval
        self.router = (NoisyTopkRouter(n_embd, n_experts, top_k, eval_noise) if noisy
                       else TopkRouter(n_embd, n_experts, top_k))
        self.experts = ExpertBank(n_experts, n_embd, hidden or 4 * n_embd, dropout, activation)
        self.stats: MoEStats | None = None

    @property
    def drops_tokens(self) -> bool:
        """Whether this call applies the capacity: in training, or in evaluation with ``capacity_in_eval``."""
        return self.capacity_factor is not None and (self.training or self.capacity_in_eval)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.size(-1) != self.n_embd:
            raise ValueError(f"expected input of shape (B, T, {self.n_embd}), got "
                             f"{tuple(getattr(x, 'shape', ()))}; a flat (N, C) batch becomes x.view(1, N, C)")
        flat = x.reshape(-1, self.n_embd)  # (N, C), N = B·T
        routing = self.router(flat)
        keep = None
        if self.drops_tokens:
            cap = expert_capacity(flat.size(0), self.top_k, self.n_experts, self.capacity_factor)
            keep = capacity_keep_mask(routing.expert_idx, self.n_experts, cap)  # (N, k)
        if self.dispatch == "batched":  # the router's routing is valid by construction: no argument checks
            y = _batched(flat, self.experts, routing.expert_idx, routing.gates, keep)  # (N, C)
        else:
            y = dispatch(self.dispatch, flat, self.experts, routing.expert_idx, routing.gates, keep)  # (N, C)
        self.stats = MoEStats(routing, keep, self.n_experts)  # computed when read: free if nobody asks
        return y.view_as(x)


class MoEStats:
    """One forward call of a :class:`SparseMoE`: auxiliary losses and load, each computed on first read.

    Inference pays nothing for statistics it never reads; training reads the two losses every step.
    """

    def __init__(self, routing: Routing, keep: torch.Tensor | None, n_experts: int):
        self.routing, self.keep, self.n_experts = routing, keep, n_experts

    @cached_property
    def balance_loss(self) -> torch.Tensor:
        """Scalar, differentiable: Switch's E · Σ f_i P_i."""
        return _balance(self.routing.probs, self.routing.expert_idx)

    @cached_property
    def z_loss(self) -> torch.Tensor:
        """Scalar, differentiable: ST-MoE's mean logsumexp² of the clean router logits."""
        return router_z_loss(self.routing.logits)

    @cached_property
    def load(self) -> torch.Tensor:
        """(E,) share of assignments per expert (before capacity), sums to 1."""
        return _fractions(self.routing.expert_idx, self.n_experts).detach()

    @cached_property
    def dropped_fraction(self) -> float:
        """Share of assignments this call dropped (0 when no capacity applied)."""
        return 0.0 if self.keep is None else 1.0 - self.keep.float().mean().item()

    def dropped_at(self, capacity_factor: float) -> float:
        """Share of this call's assignments that a capacity of ``capacity_factor`` would drop (nothing re-run)."""
        N, k = self.routing.expert_idx.shape
        cap = expert_capacity(N, k, self.n_experts, capacity_factor)
        return 1.0 - capacity_keep_mask(self.routing.expert_idx, self.n_experts, cap).float().mean().item()

    @cached_property
    def gate_entropy(self) -> float:
        """Mean entropy (nats) of the router's softmax over all E experts: ln E when undecided, 0 when sure."""
        p = self.routing.probs.detach()
        return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())
