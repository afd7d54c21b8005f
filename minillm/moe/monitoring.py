r"""Watching the router: per-expert load, gate entropy, and which tokens each expert takes.

The load of expert e in layer l is the share of that layer's :math:`Nk` assignments routed to e (before any
capacity); a perfectly balanced layer gives every expert :math:`1/E`. ``max_load_ratio`` is the busiest expert's
share over :math:`1/E`. The gate entropy :math:`-\sum_e p_e \ln p_e` of the router's softmax over all E experts is
:math:`\ln E` when the router is undecided and 0 when it is certain. :func:`routing_by_token` counts, for every
input token id, how often each expert was chosen for it — for a character-level model, which characters each expert
takes.

Defined in chapter 2.
"""

from __future__ import annotations

from typing import Callable

import torch

from minillm.core.evaluation import eval_mode
from minillm.moe.model import MoELM


def _check_model(model: MoELM, x: torch.Tensor) -> None:
    if not isinstance(model, MoELM) or not model.moe_layers:
        raise TypeError(f"routing statistics need a MoELM with SparseMoE layers, got {type(model).__name__}"
                        f"{' (a dense baseline)' if isinstance(model, MoELM) else ''}; pass the MoE model")
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.is_floating_point():
        raise ValueError(f"x must be a (B, T) batch of token ids, got {getattr(x, 'dtype', type(x))} of shape "
                         f"{tuple(getattr(x, 'shape', ()))}; take one from get_batch(splits.val, ...)")


@torch.no_grad()
def expert_load(model: MoELM, x: torch.Tensor, capacity_factor: float | None = None) -> dict[str, torch.Tensor]:
    """Route the batch ``x`` (B, T) in eval mode, per layer: load (L, E), gate entropy (L,), balance loss (L,).

    ``dropped`` (L,) is the share of assignments a capacity of ``capacity_factor`` would drop on this batch
    (the model's own ``capacity_factor`` when None; zeros without one). Nothing is dropped while routing.
    """
    _check_model(model, x)
    with eval_mode(model):
        model(x)
    layers = model.moe_layers
    factor = capacity_factor if capacity_factor is not None else layers[0].capacity_factor
    load = torch.stack([m.stats.load for m in layers])  # (L, E)
    dropped = torch.tensor([m.stats.dropped_at(factor) if factor is not None else 0.0 for m in layers])  # (L,)
    entropy = torch.tensor([m.stats.gate_entropy for m in layers])  # (L,)
    balance = torch.stack([m.stats.balance_loss for m in layers])  # (L,)
    return {"load": load, "dropped": dropped, "entropy": entropy, "balance": balance}


def load_callback(x_probe: torch.Tensor) -> Callable[[int, MoELM], dict[str, float]]:
    """An ``eval_callback`` for :func:`minillm.gpt.train.train_lm` logging per-expert load on ``x_probe``.

    Metrics: ``load_l{l}_e{e}`` (share of layer l's assignments), ``max_load_ratio`` (busiest expert's
    share over the uniform 1/E, worst layer), ``dropped_fraction`` (at the model's capacity factor, if any),
    ``gate_entropy`` and ``balance_loss`` (means over layers).
    """
    if not isinstance(x_probe, torch.Tensor) or x_probe.dim() != 2 or x_probe.is_floating_point():
        raise ValueError(f"x_probe must be a (B, T) batch of token ids, got {getattr(x_probe, 'dtype', type(x_probe))} "
                         f"of shape {tuple(getattr(x_probe, 'shape', ()))}; take one from get_batch(splits.val, ...)")

    def callback(iteration: int, model: MoELM) -> dict[str, float]:
        stats = expert_load(model, x_probe)
        load, n_experts = stats["load"], stats["load"].size(1)
        metrics = {f"load_l{l}_e{e}": float(load[l, e]) for l in range(load.size(0)) for e in range(n_experts)}
        metrics["max_load_ratio"] = float(load.max() * n_experts)
        metrics["dropped_fraction"] = float(stats["dropped"].mean())
        metrics["gate_entropy"] = float(stats["entropy"].mean())
        metrics["balance_loss"] = float(stats["balance"].mean())
        return metrics

    return callback


def load_history(extra: list[dict[str, float]], n_layer: int, n_experts: int) -> torch.Tensor:
    """Stack the callback's ``load_l*_e*`` metrics of every evaluation into (n_evals, L, E)."""
    missing = [k for k in ("load_l0_e0", f"load_l{n_layer - 1}_e{n_experts - 1}") if extra and k not in extra[0]]
    if not extra or missing:
        raise ValueError(f"load_history needs the metrics load_callback logs (load_l{{l}}_e{{e}}), got "
                         f"{sorted(extra[0])[:4] if extra else 'no evaluations'}; train with "
                         "eval_callback=load_callback(x_probe) and pass history.extra")
    return torch.tensor([[[row[f"load_l{l}_e{e}"] for e in range(n_experts)] for l in range(n_layer)]
                         for row in extra])


@torch.no_grad()
def routing_by_token(model: MoELM, x: torch.Tensor) -> torch.Tensor:
    """(L, V, E) counts: how often each layer's router sent a position holding token v to expert e (all k picks)."""
    _check_model(model, x)
    with eval_mode(model):
        model(x)
    V, E = model.config.vocab_size, model.config.n_experts
    token = x.reshape(-1, 1).expand(-1, model.config.top_k).reshape(-1)  # (N·k,) the input token of each pick
    tables = []
    for layer in model.moe_layers:
        pick = layer.stats.routing.expert_idx.reshape(-1)  # (N·k,)
        tables.append(torch.bincount(token * E + pick, minlength=V * E).view(V, E))
    return torch.stack(tables)  # (L, V, E)
