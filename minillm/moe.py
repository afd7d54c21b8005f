r"""A sparse mixture-of-experts layer: experts, (noisy) top-k routers, balancing losses, ``SparseMoE``.

A router scores the E experts for each token, keeps the top k and renormalises over them
(Shazeer et al., 2017):

.. math::

    h(x) = W_r x + \epsilon \odot \mathrm{softplus}(W_n x),\ \epsilon \sim \mathcal{N}(0, I)
    \ \text{(noise in training only)}, \qquad
    g(x) = \mathrm{softmax}\big(\mathrm{TopK}(h(x), k)\big),

and the layer outputs :math:`y = \sum_{e \in \mathrm{TopK}} g_e(x)\,\mathrm{FFN}_e(x)`.

Two auxiliary losses keep training healthy at scale:

* load balancing (Switch Transformer): :math:`\mathcal{L}_{bal} = E \sum_{i=1}^{E} f_i P_i`, with
  :math:`f_i` the fraction of the :math:`Nk` assignments sent to expert i and :math:`P_i` the mean
  router probability of expert i. It equals 1 when both are uniform and grows as load concentrates.
* router z-loss (ST-MoE): :math:`\mathcal{L}_z = \frac1N \sum_x \big(\log\sum_i e^{h_i(x)}\big)^2`,
  which keeps router logits small so the softmax stays numerically tame.

Defined in chapter 2. The dispatch strategies live in :mod:`minillm.moe_dispatch`, the language model
in :mod:`minillm.moe_lm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.moe_experts import Expert, ExpertBank  # noqa: F401  (Expert re-exported: makeMoE's single expert)
from minillm.moe_dispatch import DISPATCH_NAMES, DispatchName, capacity_keep_mask, dispatch, expert_capacity


@dataclass
class Routing:
    """What a router decides for N tokens."""

    logits: torch.Tensor  # (N, E) clean router logits W_r x (for the z-loss)
    probs: torch.Tensor  # (N, E) softmax over all E of the logits used for routing (for the balance loss)
    expert_idx: torch.Tensor  # (N, k) chosen experts, best first
    gates: torch.Tensor  # (N, k) softmax over the k chosen logits: the mixing weights


class TopkRouter(nn.Module):
    """Deterministic top-k router: a linear score per expert, keep the k best, softmax over them."""

    def __init__(self, n_embd: int, n_experts: int, top_k: int):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        self.n_experts, self.top_k = n_experts, top_k
        self.route = nn.Linear(n_embd, n_experts)

    def route_logits(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits  # no noise

    def forward(self, x: torch.Tensor) -> Routing:
        """x: (N, C) -> Routing for those N tokens."""
        if x.dim() != 2:
            raise ValueError(f"router input must be flattened tokens (N, C), got {tuple(x.shape)}")
        logits = self.route(x)  # (N, E)
        h = self.route_logits(x, logits)  # (N, E), noisy in training for the noisy router
        top_vals, expert_idx = h.topk(self.top_k, dim=-1)  # (N, k) each
        return Routing(logits=logits, probs=F.softmax(h, dim=-1), expert_idx=expert_idx,
                       gates=F.softmax(top_vals, dim=-1))


class NoisyTopkRouter(TopkRouter):
    """makeMoE's noisy top-k router: Gaussian noise with a learned, per-token softplus scale.

    The noise explores routings early in training. It is added in training mode only; makeMoE also
    adds it at evaluation, which makes validation loss and generation random. ``eval_noise=True``
    reproduces that behaviour so the chapter can show its effect.
    """

    def __init__(self, n_embd: int, n_experts: int, top_k: int, eval_noise: bool = False):
        super().__init__(n_embd, n_experts, top_k)
        self.noise = nn.Linear(n_embd, n_experts)
        self.eval_noise = eval_noise

    def route_logits(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if not (self.training or self.eval_noise):
            return logits
        return logits + torch.randn_like(logits) * F.softplus(self.noise(x))  # (N, E)


def expert_fractions(expert_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """f: (E,) share of the N·k assignments that chose each expert (sums to 1)."""
    counts = torch.bincount(expert_idx.reshape(-1), minlength=n_experts)
    return counts.to(torch.float32) / max(1, expert_idx.numel())


def load_balancing_loss(probs: torch.Tensor, expert_idx: torch.Tensor) -> torch.Tensor:
    """Switch-style E · Σ_i f_i · P_i; 1.0 at perfect balance. probs: (N, E), expert_idx: (N, k)."""
    n_experts = probs.size(-1)
    f = expert_fractions(expert_idx, n_experts).to(probs.dtype)  # (E,) counts: no gradient
    p = probs.mean(dim=0)  # (E,) differentiable: the gradient pushes probability off busy experts
    return n_experts * (f * p).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE z-loss: mean over tokens of logsumexp(logits)². logits: (N, E)."""
    return torch.logsumexp(logits, dim=-1).square().mean()


class SparseMoE(nn.Module):
    """Drop-in replacement for a transformer MLP: route each token to ``top_k`` of ``n_experts``.

    Args:
        hidden: width of each expert's MLP (makeMoE: 4·n_embd).
        noisy: use :class:`NoisyTopkRouter` (else :class:`TopkRouter`).
        capacity_factor: None for no limit; else each expert takes at most
            ``ceil(capacity_factor · N·k / E)`` assignments per call and drops the rest.
        dispatch: "batched" (fastest: one batched product for all experts), "sorted" (one call per expert),
            "masked_loop" (makeMoE) or "dense" (reference) — the same function, four ways.

    The experts' weights live stacked in an :class:`~minillm.moe_experts.ExpertBank` (``self.experts``);
    ``self.experts[e]`` is expert e, and makeMoE-style state dicts with per-expert keys load into it.

    After each forward, ``self.stats`` holds this call's balance loss, z-loss, per-expert load and
    dropped fraction; the language model adds the losses to its objective.
    """

    def __init__(self, n_embd: int, n_experts: int = 8, top_k: int = 2, hidden: int | None = None,
                 dropout: float = 0.0, noisy: bool = True, capacity_factor: float | None = None,
                 dispatch: DispatchName = "batched", eval_noise: bool = False):
        super().__init__()
        if dispatch not in DISPATCH_NAMES:
            raise ValueError(f"unknown dispatch {dispatch!r}; choose one of {DISPATCH_NAMES}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0 or None (no limit), got {capacity_factor}")
        self.n_embd, self.n_experts, self.top_k = n_embd, n_experts, top_k
        self.capacity_factor, self.dispatch = capacity_factor, dispatch
        self.router = (NoisyTopkRouter(n_embd, n_experts, top_k, eval_noise) if noisy
                       else TopkRouter(n_embd, n_experts, top_k))
        self.experts = ExpertBank(n_experts, n_embd, hidden or 4 * n_embd, dropout)
        self.stats: MoEStats | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        if x.dim() != 3 or x.size(-1) != self.n_embd:
            raise ValueError(f"expected input of shape (B, T, {self.n_embd}), got {tuple(x.shape)}")
        flat = x.reshape(-1, self.n_embd)  # (N, C), N = B·T
        routing = self.router(flat)
        keep = None
        if self.capacity_factor is not None:
            cap = expert_capacity(flat.size(0), self.top_k, self.n_experts, self.capacity_factor)
            keep = capacity_keep_mask(routing.expert_idx, self.n_experts, cap)  # (N, k)
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
        return load_balancing_loss(self.routing.probs, self.routing.expert_idx)

    @cached_property
    def z_loss(self) -> torch.Tensor:
        """Scalar, differentiable: ST-MoE's mean logsumexp² of the clean router logits."""
        return router_z_loss(self.routing.logits)

    @cached_property
    def load(self) -> torch.Tensor:
        """(E,) share of assignments per expert (before capacity), sums to 1."""
        return expert_fractions(self.routing.expert_idx, self.n_experts).detach()

    @cached_property
    def dropped_fraction(self) -> float:
        """Share of assignments beyond capacity (0 without a capacity)."""
        return 0.0 if self.keep is None else 1.0 - self.keep.float().mean().item()
