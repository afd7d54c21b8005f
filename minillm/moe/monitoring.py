"""Watching the router: per-expert load of a probe batch, logged during training and stacked for plots.

The load of expert e in layer l is the share of that layer's :math:`Nk` assignments routed to e
(before capacity); a perfectly balanced layer gives every expert :math:`1/E`. ``max_load_ratio`` is the
busiest expert's share over :math:`1/E`.

Defined in chapter 2.
"""

from __future__ import annotations

from typing import Callable

import torch

from minillm.core.evaluation import eval_mode
from minillm.moe.model import MoELM


@torch.no_grad()
def expert_load(model: MoELM, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Route the batch ``x`` (B, T) in eval mode: per-layer load (L, E) and dropped fraction (L,)."""
    with eval_mode(model):
        model(x)
    load = torch.stack([m.stats.load for m in model.moe_layers])  # (L, E)
    dropped = torch.tensor([m.stats.dropped_fraction for m in model.moe_layers])  # (L,)
    balance = torch.stack([m.stats.balance_loss for m in model.moe_layers])  # (L,)
    return {"load": load, "dropped": dropped, "balance": balance}


def load_callback(x_probe: torch.Tensor) -> Callable[[int, MoELM], dict[str, float]]:
    """An ``eval_callback`` for :func:`minillm.gpt.train.train_lm` logging per-expert load on ``x_probe``.

    Metrics: ``load_l{l}_e{e}`` (share of layer l's assignments), ``max_load_ratio`` (busiest expert's
    share over the uniform 1/E, worst layer), ``dropped_fraction`` and ``balance_loss`` (mean over layers).
    """

    def callback(iteration: int, model: MoELM) -> dict[str, float]:
        stats = expert_load(model, x_probe)
        load, n_experts = stats["load"], stats["load"].size(1)
        metrics = {f"load_l{l}_e{e}": float(load[l, e]) for l in range(load.size(0)) for e in range(n_experts)}
        metrics["max_load_ratio"] = float(load.max() * n_experts)
        metrics["dropped_fraction"] = float(stats["dropped"].mean())
        metrics["balance_loss"] = float(stats["balance"].mean())
        return metrics

    return callback


def load_history(extra: list[dict[str, float]], n_layer: int, n_experts: int) -> torch.Tensor:
    """Stack the callback's ``load_l*_e*`` metrics of every evaluation into (n_evals, L, E)."""
    return torch.tensor([[[row[f"load_l{l}_e{e}"] for e in range(n_experts)] for l in range(n_layer)]
                         for row in extra])
