"""Training and evaluating the image classifiers of chapter 6: the shared step loop with UPDP's two twists.

Every stage of UPDP (baseline, supernet, subnet fine-tuning) trains with AdamW and a cosine learning-rate decay
to zero, :math:`\\eta_t = \\tfrac12 \\eta_{max}(1 + \\cos \\pi t / T)`, through
:func:`minillm.core.training.train_steps`. What is UPDP's own:

* a step may sum the losses of several *subnets* that share weights (the sandwich rule of the supernet):
  ``g = ∇ (1/S) Σ_s L(subnet_s)``, each subnet's gradient accumulated before the one optimizer step;
* a schedule ``λ(step, total)`` moves the pruned blocks' activations towards the identity.

:func:`recalibrate_bn` re-estimates BatchNorm statistics for one subnet of a supernet before it is evaluated.

Defined in chapter 6 (UPDP depth pruning).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from minillm.core.evaluation import evaluate_classifier, tensor_batches
from minillm.core.training import make_adamw, train_steps, warmup_schedule
from minillm.data.images import ImageData
from minillm.prune.models import Mask, PrunableModel


@dataclass(frozen=True)
class ImageTrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    seed: int = 0

    SMOKE_CAPS: ClassVar[dict[str, int]] = {"epochs": 1}

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ImageTrainConfig.{name} must be a positive integer, got {getattr(self, name)!r}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"ImageTrainConfig.lr must be a positive finite number, got {self.lr}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"ImageTrainConfig.weight_decay must be >= 0, got {self.weight_decay}.")


def _images(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of images (N, C, H, W), got "
                         f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', '')}; "
                         "add the channel axis with x[:, None] and convert with x.float().")
    if len(x) == 0:
        raise ValueError(f"{name} holds no images; pass at least one.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf; clean or re-standardise the images first.")


def _labels(y: torch.Tensor, n: int) -> None:
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype != torch.int64:
        raise ValueError(f"labels must be an int64 tensor (N,), got {type(y).__name__} "
                         f"{tuple(getattr(y, 'shape', ()))} {getattr(y, 'dtype', '')}; convert with y.long().")
    if len(y) != n:
        raise ValueError(f"{n} images but {len(y)} labels; pass one label per image.")


def limit_examples(data: ImageData, train: int | None = None, evaluation: int | None = None) -> ImageData:
    """``data`` with its first ``train`` training and first ``evaluation`` validation/test images (None: all)."""
    for name, n in (("train", train), ("evaluation", evaluation)):
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"{name} must be None (all examples) or a positive count, got {n!r}.")
    if train is None and evaluation is None:
        return data
    tr, ev = slice(None, train), slice(None, evaluation)
    return ImageData(data.name, data.x_train[tr], data.y_train[tr], data.x_val[ev], data.y_val[ev],
                     data.x_test[ev], data.y_test[ev])


@torch.no_grad()
def image_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy on images ``x`` (N, C, H, W) with labels ``y`` (N,), in eval mode (mode restored)."""
    _images(x)
    _labels(y, len(x))
    device = next(model.parameters()).device
    forward = lambda m, b: (m(b[0].to(device)), b[1])  # noqa: E731
    return evaluate_classifier(model, tensor_batches(x, y, batch_size), forward).accuracy


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batches: int = 4, batch_size: int = 256,
                   seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running mean/var for the current subnet (cumulative average).

    In a supernet a pruned block's BN saw many different upstream subnets; its statistics must match the
    one subnet being evaluated before its accuracy means anything.
    """
    _images(x)
    if batches < 1 or batch_size < 1:
        raise ValueError(f"batches={batches} and batch_size={batch_size} must be positive; BN statistics need "
                         "at least one calibration batch.")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer to recalibrate; call recalibrate_bn "
                         "on a model with BatchNorm (a UPDP supernet or subnet).")
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    was_training = model.training
    model.train()  # BatchNorm updates its statistics only in training mode
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=g)
        model(x[idx].to(device))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.train(was_training)


def train_image_classifier(model: PrunableModel, data: ImageData, cfg: ImageTrainConfig,
                           subnets: Callable[[int, random.Random], Sequence[Mask]] | None = None,
                           lam: Callable[[int, int], float] | None = None, tracker=None,
                           desc: str = "train") -> list[float]:
    """AdamW with cosine decay; each step sums the losses of ``subnets(step, rng)`` (default: the current one).

    ``lam(step, total)`` sets λ of the pruned blocks before each step. Returns the per-step mean loss.
    """
    if not isinstance(model, PrunableModel):
        raise TypeError(f"train_image_classifier trains a PrunableModel (ResCNN, TinyViT), got "
                        f"{type(model).__name__}; build one from minillm.prune.")
    _images(data.x_train, "data.x_train")
    _labels(data.y_train, len(data.x_train))
    classes = getattr(getattr(model, "cfg", None), "num_classes", None)
    if classes is not None and (int(data.y_train.min()) < 0 or int(data.y_train.max()) >= classes):
        raise ValueError(f"labels must lie in [0, {classes}) for this model, got "
                         f"[{int(data.y_train.min())}, {int(data.y_train.max())}]; set num_classes in the config.")
    device = next(model.parameters()).device
    opt = make_adamw(model, cfg.lr, cfg.weight_decay, decay="all")
    steps_per_epoch = math.ceil(len(data.y_train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    g = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    fixed = model.subnet

    def batches() -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for step in range(total):
            if step % steps_per_epoch == 0:
                order = torch.randperm(len(data.y_train), generator=g)
            idx = order[(step % steps_per_epoch) * cfg.batch_size:][:cfg.batch_size]
            yield step, data.x_train[idx].to(device), data.y_train[idx].to(device)  # (B, 1, H, W), (B,)

    def backward(batch: tuple[int, torch.Tensor, torch.Tensor]) -> float:
        step, xb, yb = batch
        if lam is not None:
            model.set_lambda(lam(step, total))
        masks = subnets(step, rng) if subnets is not None else [fixed]
        step_loss = 0.0
        for mask in masks:  # gradients accumulate over the subnets of this step
            model.set_subnet(mask)
            loss = F.cross_entropy(model(xb), yb) / len(masks)
            loss.backward()
            step_loss += loss.item()
        return step_loss

    log = train_steps(model, opt, batches(), backward, steps=total,
                      lr_at=lambda step: warmup_schedule(step, total, cfg.lr, 0, 0.0, "cosine"),
                      tracker=tracker, log_every=20, log_name=f"{desc}/loss", progress=True, desc=desc, leave=False,
                      mininterval=5.0)  # few refreshes: small notebook outputs
    model.set_subnet(fixed)
    return log.loss
