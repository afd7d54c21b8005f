"""Stage 1 of UPDP: train a supernet in which every block can run full or pruned, with the sandwich rule.

One optimiser step accumulates the gradients of several subnets that share weights:

    g = ∇ (1/S) Σ_s L(subnet_s),   subnets = {all full, r random, all pruned}   (S = r + 2, r = 2)

The largest and smallest subnets bound the family (the "sandwich"); the random ones cover the middle, so
any subnet the search later picks starts from weights that already work in that configuration.

Defined in chapter 6 (UPDP depth pruning).
"""

from __future__ import annotations

import random
from typing import Callable

from minillm.data.images import ImageData
from minillm.prune.models import Mask, PrunableModel
from minillm.prune.training import ImageTrainConfig, image_accuracy, recalibrate_bn, train_image_classifier


def sandwich_subnets(num_blocks: int, num_random: int = 2) -> Callable[[int, random.Random], list[Mask]]:
    """The sandwich rule: all-full, ``num_random`` uniformly random masks, all-pruned, for every step."""
    if not isinstance(num_blocks, int) or num_blocks < 1 or not isinstance(num_random, int) or num_random < 0:
        raise ValueError(f"sandwich_subnets needs num_blocks >= 1 and num_random >= 0, got {num_blocks} and "
                         f"{num_random}; pass model.num_blocks.")

    def pick(step: int, rng: random.Random) -> list[Mask]:
        rand = [tuple(rng.random() < 0.5 for _ in range(num_blocks)) for _ in range(num_random)]
        return [(False,) * num_blocks, *rand, (True,) * num_blocks]
    return pick


def train_supernet(model: PrunableModel, data: ImageData, cfg: ImageTrainConfig, num_random: int = 2,
                   tracker=None) -> list[float]:
    """Stage 1: sandwich-rule training with every pruned block at λ = 1 (its mergeable, linear form)."""
    if not isinstance(model, PrunableModel):
        raise TypeError(f"train_supernet trains a PrunableModel (ResCNN, TinyViT), got {type(model).__name__}; "
                        "build the supernet from minillm.prune.")
    model.set_lambda(1.0)
    return train_image_classifier(model, data, cfg, subnets=sandwich_subnets(model.num_blocks, num_random),
                                  tracker=tracker, desc="supernet")


def subnet_fitness(model: PrunableModel, data: ImageData, calib_batches: int = 4) -> Callable[[Mask], float]:
    """Fitness for the search: validation accuracy of ``model`` switched to a mask, BN recalibrated first.

    The model's BN statistics change as a side effect: search on a copy of the supernet.
    """
    if not isinstance(model, PrunableModel):
        raise TypeError(f"subnet_fitness scores subnets of a PrunableModel, got {type(model).__name__}; "
                        "pass the trained supernet (a ResCNN or TinyViT).")
    if not isinstance(calib_batches, int) or calib_batches < 1:
        raise ValueError(f"calib_batches={calib_batches!r} must be a positive integer: BatchNorm needs at "
                         "least one batch to re-estimate its statistics.")

    def fitness(mask: Mask) -> float:
        model.set_subnet(mask)
        model.set_lambda(1.0)
        recalibrate_bn(model, data.x_train, batches=calib_batches)
        return image_accuracy(model, data.x_val, data.y_val)
    return fitness
