r"""Evaluation helpers every chapter shares: evaluation mode as a context, and classifier accuracy.

Accuracy is the share of examples whose arg-max logit is the label; the mean cross-entropy
:math:`-\frac1n\sum_i \log p_\theta(y_i \mid x_i)` comes with it, and so does the per-example correctness,
which is what a *paired* comparison of two models on the same test set needs
(:mod:`minillm.core.claims`).

Defined in the foundation; chapters 3, 4 and 6 evaluate their classifiers with :func:`evaluate_classifier`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

B = TypeVar("B")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model):`` — dropout off and BatchNorm frozen inside; the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class ClassifierEval:
    """Accuracy, mean cross-entropy and per-example correctness of a classifier on one data set."""

    accuracy: float
    loss: float
    correct: torch.Tensor  # (n,) bool, in data order

    @property
    def n(self) -> int:
        return int(self.correct.numel())


@torch.no_grad()
def evaluate_classifier(model: nn.Module, batches: Iterable[B],
                        forward: Callable[[nn.Module, B], tuple[torch.Tensor, torch.Tensor]]) -> ClassifierEval:
    """Run ``forward(model, batch) -> (logits (B, C), labels (B,))`` over ``batches`` in eval mode."""
    correct, total_loss = [], 0.0
    with eval_mode(model):
        for batch in batches:
            logits, labels = forward(model, batch)
            if logits.dim() != 2 or labels.shape != logits.shape[:1]:
                raise ValueError(f"forward must return logits (B, C) and labels (B,), got {tuple(logits.shape)} "
                                 f"and {tuple(labels.shape)}")
            labels = labels.to(logits.device)
            total_loss += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
            correct.append((logits.argmax(-1) == labels).cpu())
    if not correct:
        raise ValueError("no batches to evaluate: the data set is empty")
    hits = torch.cat(correct)
    return ClassifierEval(float(hits.float().mean()), total_loss / hits.numel(), hits)


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(x[i:i+b], y[i:i+b])`` slices: batches of an in-memory data set, in order."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)} labels")
    for i in range(0, len(y), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]
