r"""Routers and their auxiliary losses: which k of the E experts each token goes to, and how evenly.

A router scores the E experts for each token, keeps the top k and renormalises over them
(Shazeer et al., 2017):

.. math::

    h(x) = W_r x + \epsilon \odot \mathrm{softplus}(W_n x),\ \epsilon \sim \mathcal{N}(0, I)
    \ \text{(noise in training only)}, \qquad
    g(x) = \mathrm{softmax}\big(\mathrm{TopK}(h(x), k)\big).

Two auxiliary losses keep training healthy at scale:

* load balancing (Switch Transformer): :math:`\mathcal{L}_{bal} = E \sum_{i=1}^{E} f_i P_i`, with
  :math:`f_i` the fraction of the :math:`Nk` assignments sent to expert i and :math:`P_i` the mean
  router probability of expert i. It equals 1 when both are uniform and grows as load concentrates, up to
  :math:`E/k`: each token picks k *distinct* experts, so at worst k experts share every assignment
  (:math:`f_i = 1/k`) and hold all the probability (:math:`\sum_{i \in \text{busy}} P_i = 1`), giving
  :math:`E \cdot \frac1k \cdot 1`.
* router z-loss (ST-MoE): :math:`\mathcal{L}_z = \frac1N \sum_x \big(\log\sum_i e^{h_i(x)}\big)^2`,
  which keeps router logits small so the softmax stays numerically tame.

Defined in chapter 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        for name, value in (("n_embd", n_embd), ("n_experts", n_experts), ("top_k", top_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}; a token picks k distinct "
                             "experts, so lower top_k or add experts")
        self.n_experts, self.top_k = n_experts, top_k
        self.route = nn.Linear(n_embd, n_experts)

    def route_logits(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits  # no noise

    def forward(self, x: torch.Tensor) -> Routing:
        """x: (N, C) -> Routing for those N tokens."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.size(-1) != self.route.in_features:
            raise ValueError(f"router input must be flattened tokens (N, {self.route.in_features}), got "
                             f"{tuple(getattr(x, 'shape', ()))}; flatten (B, T, C) with x.reshape(-1, C)")
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
    _check_idx(expert_idx, n_experts)
    return _fractions(expert_idx, n_experts)


def _fractions(expert_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    counts = torch.bincount(expert_idx.reshape(-1), minlength=n_experts)
    return counts.to(torch.float32) / max(1, expert_idx.numel())


def load_balancing_loss(probs: torch.Tensor, expert_idx: torch.Tensor) -> torch.Tensor:
    """Switch-style E · Σ_i f_i · P_i: 1.0 at perfect balance, at most E/k. probs: (N, E), expert_idx: (N, k)."""
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or not probs.is_floating_point():
        raise ValueError(f"probs must be a float (N, E) matrix of router probabilities, got "
                         f"{getattr(probs, 'dtype', type(probs))} of shape {tuple(getattr(probs, 'shape', ()))}; "
                         "pass Routing.probs (a softmax over all experts)")
    if not isinstance(expert_idx, torch.Tensor) or expert_idx.dim() != 2 or expert_idx.size(0) != probs.size(0):
        raise ValueError(f"expert_idx must be (N={probs.size(0)}, k) expert ids, got "
                         f"{tuple(getattr(expert_idx, 'shape', ()))}; pass Routing.expert_idx of the same tokens")
    _check_idx(expert_idx, probs.size(-1))
    return _balance(probs, expert_idx)


def _balance(probs: torch.Tensor, expert_idx: torch.Tensor) -> torch.Tensor:
    n_experts = probs.size(-1)
    f = _fractions(expert_idx, n_experts).to(probs.dtype)  # (E,) counts: no gradient
    p = probs.mean(dim=0)  # (E,) differentiable: the gradient pushes probability off busy experts
    return n_experts * (f * p).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE z-loss: mean over tokens of logsumexp(logits)². logits: (N, E)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float (N, E) matrix of router logits, got "
                         f"{getattr(logits, 'dtype', type(logits))} of shape {tuple(getattr(logits, 'shape', ()))}; "
                         "pass Routing.logits")
    return torch.logsumexp(logits, dim=-1).square().mean()


def _check_idx(expert_idx: torch.Tensor, n_experts: int) -> None:
    if not isinstance(expert_idx, torch.Tensor) or expert_idx.dtype not in (torch.long, torch.int32):
        raise ValueError(f"expert_idx must be an integer tensor of expert ids, got "
                         f"{getattr(expert_idx, 'dtype', type(expert_idx))}; pass Routing.expert_idx")
    if expert_idx.numel():
        lo, hi = torch.stack(torch.aminmax(expert_idx)).tolist()
        if lo < 0 or hi >= n_experts:
            raise ValueError(f"expert ids must lie in [0, {n_experts}), got values in [{lo}, {hi}]; "
                             "n_experts must be the router's number of experts")
