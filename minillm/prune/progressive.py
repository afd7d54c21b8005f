"""Stages 3 and 4 of UPDP: train the chosen subnet progressively, then merge it into a shallower model.

Progressive training moves each pruned block's activation to the identity while the weights adapt:

    act_λ(x) = (1 − λ)·act(x) + λ·x,     λ(t) = min(1, t / (ρ·T))      (t: step, T: total steps)

so the first ``ρ·T`` steps ramp λ from 0 to 1 and the rest train the exact (linear, mergeable) form at
λ = 1. *Direct* pruning — the baseline UPDP improves on — sets λ = 1 from the first step.
After training, :meth:`PrunableModel.merged` folds every pruned block into one ``conv → act`` layer.

Defined in chapter 6 (UPDP depth pruning).
"""

from __future__ import annotations

from dataclasses import dataclass

from minillm.profile import current_profile
from minillm.prune.data import ImageData
from minillm.prune.models import CNN_FULL, CNN_TINY, VIT_FULL, VIT_TINY, PrunableModel, ResCNNConfig, ViTConfig
from minillm.prune.search import SearchConfig
from minillm.prune.supernet import Mask, TrainConfig, train


@dataclass(frozen=True)
class UPDPConfig:
    """Everything one UPDP run needs: data, model, the budget of each stage and how many blocks to prune."""

    data: str
    cnn: ResCNNConfig
    vit: ViTConfig
    baseline: TrainConfig
    supernet: TrainConfig
    subnet: TrainConfig
    search: SearchConfig
    pruned_blocks: int
    ramp: float = 0.5  # fraction ρ of subnet training spent moving λ from 0 to 1


UPDP_TINY = UPDPConfig(
    data="digits", cnn=CNN_TINY, vit=VIT_TINY,
    baseline=TrainConfig(epochs=15, batch_size=128, lr=3e-3),
    supernet=TrainConfig(epochs=6, batch_size=128, lr=1e-3, seed=1),
    subnet=TrainConfig(epochs=8, batch_size=128, lr=1e-3, seed=2),
    search=SearchConfig(population=6, generations=4, elite=3),
    pruned_blocks=3)

UPDP_FULL = UPDPConfig(
    data="fashion-mnist", cnn=CNN_FULL, vit=VIT_FULL,
    baseline=TrainConfig(epochs=10, batch_size=128, lr=2e-3),
    supernet=TrainConfig(epochs=6, batch_size=128, lr=1e-3, seed=1),
    subnet=TrainConfig(epochs=6, batch_size=128, lr=1e-3, seed=2),
    search=SearchConfig(population=12, generations=8, elite=4),
    pruned_blocks=4)


def updp_config() -> UPDPConfig:
    """The preset of the active profile (``MINILLM_PROFILE``)."""
    return current_profile().pick(UPDP_TINY, UPDP_FULL)


def lambda_schedule(step: int, total: int, ramp: float = 0.5) -> float:
    """λ(t) = min(1, t / (ρ·T)): linear from 0 at the first step to 1 at ``ramp·total``, then held at 1."""
    if not 0.0 < ramp <= 1.0:
        raise ValueError(f"ramp must be in (0, 1], got {ramp}.")
    if total <= 0:
        raise ValueError(f"total steps must be positive, got {total}.")
    return min(1.0, step / max(1.0, ramp * total))


def train_subnet(model: PrunableModel, mask: Mask, data: ImageData, cfg: TrainConfig, progressive: bool = True,
                 ramp: float = 0.5, tracker=None) -> list[float]:
    """Stage 3: fine-tune ``model`` as the subnet ``mask``; λ follows the schedule (or is 1 throughout).

    Ends at λ = 1, so the model can be merged with :meth:`PrunableModel.merged`.
    """
    model.set_subnet(mask)
    if progressive:
        schedule = lambda step, total: lambda_schedule(step, total, ramp)  # noqa: E731
    else:
        schedule = lambda step, total: 1.0  # noqa: E731
    losses = train(model, data, cfg, lam=schedule, tracker=tracker,
                   desc="progressive" if progressive else "direct")
    model.set_lambda(1.0)
    return losses
