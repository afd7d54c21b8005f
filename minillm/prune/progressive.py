"""Stages 3 and 4 of UPDP — progressive subnet training, then merging — and all four stages end to end.

Progressive training moves each pruned block's activation to the identity while the weights adapt:

    act_λ(x) = (1 − λ)·act(x) + λ·x,     λ(t) = min(1, t / (ρ·T))      (t: step, T: total steps)

so the first ``ρ·T`` steps ramp λ from 0 to 1 and the rest train the exact (linear, mergeable) form at
λ = 1. *Direct* pruning — the baseline UPDP improves on — sets λ = 1 from the first step.
After training, :meth:`PrunableModel.merged` folds every pruned block into one ``conv → act`` layer.

:func:`run_updp` chains the stages for any :class:`PrunableModel`:

    baseline ─(1) sandwich supernet─▶ supernet ─(2) genetic search─▶ mask (k pruned blocks)
    baseline ─(3) subnet training, λ: 0 → 1 (or λ = 1 at once: "direct")─▶ subnet ─(4) merge─▶ shallower model

Both arms of stage 3 start from the *baseline* weights, so "progressive vs direct" compares only how the
activations are removed.

Defined in chapter 6 (UPDP depth pruning).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from minillm.data.images import ImageData
from minillm.prune.models import (CNN_FULL, CNN_TINY, VIT_FULL, VIT_TINY, Mask, PrunableModel, ResCNNConfig,
                                  ViTConfig, count_layers)
from minillm.prune.search import SearchConfig, SearchResult, genetic_search
from minillm.prune.supernet import subnet_fitness, train_supernet
from minillm.prune.training import ImageTrainConfig, image_accuracy, limit_examples, train_image_classifier

DATA_SETS = ("digits", "fashion-mnist")


@dataclass(frozen=True)
class UPDPConfig:
    """Everything one UPDP run needs: data, model, the budget of each stage and how many blocks to prune.

    ``train_examples`` / ``eval_examples`` (None: all) cut the splits, ``calib_batches`` is the number of
    batches that re-estimate BatchNorm statistics before a subnet is scored; a smoke run caps all three.
    """

    data: str
    cnn: ResCNNConfig
    vit: ViTConfig
    baseline: ImageTrainConfig
    supernet: ImageTrainConfig
    subnet: ImageTrainConfig
    search: SearchConfig
    pruned_blocks: int
    ramp: float = 0.5  # fraction ρ of subnet training spent moving λ from 0 to 1
    train_examples: int | None = None
    eval_examples: int | None = None
    calib_batches: int = 4

    SMOKE_CAPS: ClassVar[dict[str, int]] = {"train_examples": 256, "eval_examples": 128, "calib_batches": 1}

    def __post_init__(self):
        if self.data not in DATA_SETS:
            raise ValueError(f"unknown image data set {self.data!r}; choose one of {DATA_SETS}.")
        if not 0 < self.pruned_blocks <= self.cnn.depth:
            raise ValueError(f"pruned_blocks={self.pruned_blocks} must be in [1, cnn.depth={self.cnn.depth}]; "
                             "prune at least one block and keep the count within the depth.")
        if not 0.0 < self.ramp <= 1.0:
            raise ValueError(f"ramp must be in (0, 1], got {self.ramp}: it is the fraction of subnet training "
                             "that moves λ from 0 to 1.")
        for name in ("train_examples", "eval_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be None (all examples) or a positive count.")
        if self.calib_batches < 1:
            raise ValueError(f"calib_batches={self.calib_batches} must be at least 1.")

    def prepare(self, data: ImageData) -> ImageData:
        """The splits this run uses: ``data`` cut to ``train_examples`` / ``eval_examples``."""
        return limit_examples(data, self.train_examples, self.eval_examples)


UPDP_TINY = UPDPConfig(
    data="digits", cnn=CNN_TINY, vit=VIT_TINY,
    baseline=ImageTrainConfig(epochs=20, batch_size=128, lr=6e-3),
    supernet=ImageTrainConfig(epochs=6, batch_size=128, lr=1e-3, seed=1),
    subnet=ImageTrainConfig(epochs=8, batch_size=128, lr=1e-3, seed=2),
    search=SearchConfig(population=6, generations=4, elite=3),
    pruned_blocks=3)

UPDP_FULL = UPDPConfig(
    data="fashion-mnist", cnn=CNN_FULL, vit=VIT_FULL,
    baseline=ImageTrainConfig(epochs=10, batch_size=128, lr=2e-3),
    supernet=ImageTrainConfig(epochs=6, batch_size=128, lr=1e-3, seed=1),
    subnet=ImageTrainConfig(epochs=6, batch_size=128, lr=1e-3, seed=2),
    search=SearchConfig(population=12, generations=8, elite=4),
    pruned_blocks=4)


def lambda_schedule(step: int, total: int, ramp: float = 0.5) -> float:
    """λ(t) = min(1, t / (ρ·T)): linear from 0 at the first step to 1 at ``ramp·total``, then held at 1."""
    if not 0.0 < ramp <= 1.0:
        raise ValueError(f"ramp must be in (0, 1], got {ramp}: it is the fraction of training spent ramping λ.")
    if total <= 0:
        raise ValueError(f"total steps must be positive, got {total}; pass the length of the training run.")
    if not 0 <= step:
        raise ValueError(f"step must be a non-negative step index, got {step}.")
    return min(1.0, step / max(1.0, ramp * total))


def train_subnet(model: PrunableModel, mask: Mask, data: ImageData, cfg: ImageTrainConfig, progressive: bool = True,
                 ramp: float = 0.5, tracker=None) -> list[float]:
    """Stage 3: fine-tune ``model`` as the subnet ``mask``; λ follows the schedule (or is 1 throughout).

    Ends at λ = 1, so the model can be merged with :meth:`PrunableModel.merged`.
    """
    if not isinstance(model, PrunableModel):
        raise TypeError(f"train_subnet fine-tunes a PrunableModel (ResCNN, TinyViT), got {type(model).__name__}.")
    lambda_schedule(0, 1, ramp)  # validates the ramp before any training
    if not any(mask):
        raise ValueError(f"mask {mask} prunes no block, so there is no subnet to fine-tune; set at least one True.")
    model.set_subnet(mask)
    if progressive:
        schedule = lambda step, total: lambda_schedule(step, total, ramp)  # noqa: E731
    else:
        schedule = lambda step, total: 1.0  # noqa: E731
    losses = train_image_classifier(model, data, cfg, lam=schedule, tracker=tracker,
                   desc="progressive" if progressive else "direct")
    model.set_lambda(1.0)
    return losses


@dataclass
class UPDPResult:
    baseline: PrunableModel
    supernet: PrunableModel
    search: SearchResult
    subnets: dict[str, PrunableModel] = field(default_factory=dict)  # "direct", "progressive" (unmerged)
    merged: dict[str, nn.Module] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)  # test accuracy per model
    merge_rel_err: dict[str, float] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)
    layers: dict[str, dict[str, int]] = field(default_factory=dict)


def merge_error(model: PrunableModel, merged: nn.Module, x: torch.Tensor) -> float:
    """max |merged(x) − model(x)| / max |model(x)| in eval mode."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or len(x) == 0:
        raise ValueError(f"merge_error needs a non-empty float batch of inputs, got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}; pass e.g. data.x_test[:256].")
    model.eval(), merged.eval()
    x = x.to(next(model.parameters()).device)
    with torch.no_grad():
        ref = model(x)
        return float((merged(x) - ref).abs().max() / ref.abs().max())


def run_updp(model: PrunableModel, data: ImageData, cfg: UPDPConfig, pruned_blocks: int | None = None,
             train_baseline: bool = True, tracker=None) -> UPDPResult:
    """Train the baseline (unless already trained), then run the four UPDP stages on it."""
    k = cfg.pruned_blocks if pruned_blocks is None else pruned_blocks
    if not 0 < k <= model.num_blocks:
        raise ValueError(f"cannot prune {k} of {model.num_blocks} blocks; choose 1 ≤ k ≤ {model.num_blocks}.")
    losses = {}
    if train_baseline:
        losses["baseline"] = train_image_classifier(model, data, cfg.baseline, tracker=tracker, desc="baseline")
    model.eval()
    supernet = copy.deepcopy(model)
    losses["supernet"] = train_supernet(supernet, data, cfg.supernet, tracker=tracker)
    search = genetic_search(subnet_fitness(copy.deepcopy(supernet), data, cfg.calib_batches), model.num_blocks, k,
                            cfg.search)
    result = UPDPResult(baseline=model, supernet=supernet, search=search, losses=losses)
    result.accuracy["baseline"] = image_accuracy(model, data.x_test, data.y_test)
    result.layers["baseline"] = count_layers(model, data.x_test[:1])
    for arm in ("direct", "progressive"):
        subnet = copy.deepcopy(model)
        result.losses[arm] = train_subnet(subnet, search.best, data, cfg.subnet, progressive=arm == "progressive",
                                          ramp=cfg.ramp, tracker=tracker)
        subnet.eval()
        merged = subnet.merged()
        result.subnets[arm], result.merged[arm] = subnet, merged
        result.accuracy[arm] = image_accuracy(subnet, data.x_test, data.y_test)
        result.accuracy[f"{arm}_merged"] = image_accuracy(merged, data.x_test, data.y_test)
        result.merge_rel_err[arm] = merge_error(subnet, merged, data.x_test[:256])
        result.layers[f"{arm}_merged"] = count_layers(merged, data.x_test[:1])
    return result


def describe_mask(mask: Mask) -> str:
    """``'F F P P P F'``: F = full block, P = pruned (merged) block."""
    if isinstance(mask, str) or not all(isinstance(p, bool) for p in mask):
        raise TypeError(f"a mask is a tuple of booleans (True = pruned), got {mask!r}; "
                        "build it with e.g. tuple(i in pruned for i in range(n)).")
    return " ".join("P" if p else "F" for p in mask)
