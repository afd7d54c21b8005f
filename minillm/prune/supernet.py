"""Stage 1 of UPDP: train a supernet in which every block can run full or pruned, with the sandwich rule.

One optimiser step accumulates the gradients of several subnets that share weights:

    g = ∇ (1/S) Σ_s L(subnet_s),   subnets = {all full, r random, all pruned}   (S = r + 2, r = 2)

The largest and smallest subnets bound the family (the "sandwich"); the random ones cover the middle, so
any subnet the search later picks starts from weights that already work in that configuration.

Also here: the shared training loop (used by every stage), accuracy, and BatchNorm recalibration.

Defined in chapter 6 (UPDP depth pruning).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from minillm.prune.data import ImageData
from minillm.prune.models import Mask, PrunableModel


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    seed: int = 0


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy in eval mode (restores the previous mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size].to(device))
        correct += int((logits.argmax(-1).cpu() == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / len(y)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batches: int = 4, batch_size: int = 256,
                   seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running mean/var for the current subnet (cumulative average).

    In a supernet a pruned block's BN saw many different upstream subnets; its statistics must match the
    one subnet being evaluated before its accuracy means anything.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=g)
        model(x[idx].to(device))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)


def train(model: PrunableModel, data: ImageData, cfg: TrainConfig,
          subnets: Callable[[int, random.Random], Sequence[Mask]] | None = None,
          lam: Callable[[int, int], float] | None = None, tracker=None, desc: str = "train") -> list[float]:
    """AdamW with cosine decay; each step sums the losses of ``subnets(step, rng)`` (default: the current one).

    ``lam(step, total)`` sets λ of the pruned blocks before each step. Returns the per-step mean loss.
    """
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data.y_train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    g = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    fixed = model.subnet
    losses: list[float] = []
    model.train()
    bar = tqdm(total=total, desc=desc, leave=False, mininterval=5.0)  # few refreshes: small notebook outputs
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(data.y_train), generator=g)
        idx = order[(step % steps_per_epoch) * cfg.batch_size:][:cfg.batch_size]
        xb, yb = data.x_train[idx].to(device), data.y_train[idx].to(device)  # (B, 1, H, W), (B,)
        if lam is not None:
            model.set_lambda(lam(step, total))
        masks = subnets(step, rng) if subnets is not None else [fixed]
        opt.zero_grad(set_to_none=True)
        step_loss = 0.0
        for mask in masks:  # gradients accumulate over the subnets of this step
            model.set_subnet(mask)
            loss = F.cross_entropy(model(xb), yb) / len(masks)
            loss.backward()
            step_loss += loss.item()
        opt.step()
        sched.step()
        losses.append(step_loss)
        if tracker is not None and step % 20 == 0:
            tracker.log_metrics({f"{desc}/loss": step_loss}, step=step)
        bar.update(1)
    bar.close()
    model.set_subnet(fixed)
    return losses


def sandwich_subnets(num_blocks: int, num_random: int = 2) -> Callable[[int, random.Random], list[Mask]]:
    """The sandwich rule: all-full, ``num_random`` uniformly random masks, all-pruned, for every step."""
    def pick(step: int, rng: random.Random) -> list[Mask]:
        rand = [tuple(rng.random() < 0.5 for _ in range(num_blocks)) for _ in range(num_random)]
        return [(False,) * num_blocks, *rand, (True,) * num_blocks]
    return pick


def train_supernet(model: PrunableModel, data: ImageData, cfg: TrainConfig, num_random: int = 2,
                   tracker=None) -> list[float]:
    """Stage 1: sandwich-rule training with every pruned block at λ = 1 (its mergeable, linear form)."""
    model.set_lambda(1.0)
    return train(model, data, cfg, subnets=sandwich_subnets(model.num_blocks, num_random), tracker=tracker,
                 desc="supernet")


def subnet_fitness(model: PrunableModel, data: ImageData, calib_batches: int = 4) -> Callable[[Mask], float]:
    """Fitness for the search: validation accuracy of ``model`` switched to a mask, BN recalibrated first.

    The model's BN statistics change as a side effect: search on a copy of the supernet.
    """
    def fitness(mask: Mask) -> float:
        model.set_subnet(mask)
        model.set_lambda(1.0)
        recalibrate_bn(model, data.x_train, batches=calib_batches)
        return accuracy(model, data.x_val, data.y_val)
    return fitness
