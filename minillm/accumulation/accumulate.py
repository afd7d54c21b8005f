"""Gradient accumulation: the gradient of a large batch, computed from several small ones.

Split a batch ``B`` into micro-batches ``B_1 … B_k`` that fit in memory. Let each micro-batch hold
``n_j`` loss *units* (examples for a classifier, target tokens for a language model) and
``N = Σ_j n_j``. Because a gradient is linear,

    ∇ (1/N) Σ_{u ∈ B} ℓ_u  =  Σ_j ∇ [ (1/N) Σ_{u ∈ B_j} ℓ_u ],

so each micro-batch back-propagates its **summed** loss divided by the step's **total** unit count
``N``; ``.backward()`` adds the pieces into ``.grad`` and the optimizer then steps once. With equal
micro-batches and mean losses this is the familiar ``loss_j / k``. The common shortcut of averaging
each micro-batch's *mean* (``Σ_j mean_j / k``, the "mean of means") weights a unit by
``1 / (k · n_j)`` instead of ``1 / N``: it is wrong whenever the ``n_j`` differ — variable-length
sequences, padding, or a short last micro-batch.

The optimizer steps after micro-batch ``i`` when ``(i + 1) % k == 0`` or ``i`` is the last one, so
a short tail group still updates the model (and is normalised by its own, smaller ``N``).

Defined in chapter 4 (gradient accumulation).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from minillm.core.training import StepOutput, TrainLog, train_steps

IGNORE_INDEX = -100  # label value that contributes no loss (padding), as in torch's cross_entropy
UNITS = ("examples", "tokens")
NORMALISATIONS = ("units", "mean_of_means")


def should_step(i: int, accumulation_steps: int, num_micro_batches: int) -> bool:
    """True when the optimizer steps after micro-batch ``i`` (0-based): every ``k``-th one, and the last."""
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    return (i + 1) % accumulation_steps == 0 or i + 1 == num_micro_batches


def grouped(micro_batches: Iterable, accumulation_steps: int) -> Iterator[list]:
    """Yield the micro-batches of each optimizer step: lists of ``k``, the last one possibly shorter.

    The group boundaries are exactly the indices where :func:`should_step` is true.
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    group: list = []
    for batch in micro_batches:
        group.append(batch)
        if len(group) == accumulation_steps:
            yield group
            group = []
    if group:
        yield group


def count_units(batch: dict[str, torch.Tensor], unit: str) -> int:
    """How many loss terms a batch contributes: its examples, or its non-ignored next-token targets."""
    if unit == "examples":
        return int(batch["labels"].shape[0])
    if unit == "tokens":
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # targets are labels shifted left
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


def summed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], unit: str) -> torch.Tensor:
    """The **sum** (not the mean) of the batch's per-unit cross-entropy losses.

    ``unit="examples"``: logits (B, C) against labels (B,). ``unit="tokens"``: a causal LM's logits
    (B, T, V) predict ``labels[:, 1:]`` from positions ``:-1``; ``IGNORE_INDEX`` targets are skipped.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    labels = batch["labels"]
    if unit == "examples":
        if logits.dim() != 2:
            raise ValueError(f"unit='examples' needs logits (B, C), got shape {tuple(logits.shape)}; "
                             f"use unit='tokens' for a language model")
        return F.cross_entropy(logits.float(), labels, reduction="sum")
    if unit == "tokens":
        if logits.dim() != 3:
            raise ValueError(f"unit='tokens' needs logits (B, T, V), got shape {tuple(logits.shape)}")
        shift_logits = logits[:, :-1].float()  # (B, T-1, V)
        shift_labels = labels[:, 1:]           # (B, T-1)
        return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


def accumulate_gradients(model: torch.nn.Module, micro_batches: Sequence[dict[str, torch.Tensor]],
                         unit: str = "examples", normalisation: str = "units",
                         autocast_dtype: torch.dtype | None = None, scaler=None) -> float:
    """Back-propagate one optimizer step's micro-batches into ``.grad``; return the step's loss.

    ``normalisation="units"`` divides every summed loss by the step's total unit count ``N`` (the
    full-batch gradient). ``"mean_of_means"`` divides by ``n_j · k`` — the bug, kept to demonstrate it.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    if not micro_batches:
        raise ValueError("an optimizer step needs at least one micro-batch")
    device_type = next(model.parameters()).device.type
    counts = [count_units(b, unit) for b in micro_batches]
    total = sum(counts)
    if total == 0:
        raise ValueError("these micro-batches contain no loss units (all targets ignored?)")
    step_loss = 0.0
    for batch, n in zip(micro_batches, counts):
        if n == 0:
            continue  # nothing to learn from an all-padding micro-batch; the mean would be 0/0
        mixed = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        with mixed:  # forward in reduced precision; the loss itself is summed in fp32 (see summed_loss)
            loss_sum = summed_loss(model, batch, unit)
        scale = total if normalisation == "units" else n * len(micro_batches)
        loss = loss_sum / scale
        (scaler.scale(loss) if scaler is not None else loss).backward()
        step_loss += loss.item()
    return step_loss


def train_accumulated(model: torch.nn.Module, loader: Iterable[dict[str, torch.Tensor]],
                      optimizer: torch.optim.Optimizer, accumulation_steps: int, *, unit: str = "examples",
                      epochs: int = 1, autocast_dtype: torch.dtype | None = None, max_grad_norm: float | None = None,
                      tracker=None, progress: bool = True, desc: str = "train") -> TrainLog:
    """Train with gradient accumulation: one optimizer step per ``accumulation_steps`` micro-batches.

    The shared step loop (:func:`minillm.core.training.train_steps`) with :func:`accumulate_gradients` as each
    step's backward. ``autocast_dtype`` runs forward passes in mixed precision (``torch.bfloat16`` on CPU or
    GPU; ``torch.float16`` on CUDA adds a gradient scaler). Each step's loss goes to ``tracker`` (mlflow).
    """
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 and device.type == "cuda" else None

    def groups() -> Iterator[list[dict[str, torch.Tensor]]]:
        for _ in range(epochs):
            yield from grouped(loader, accumulation_steps)

    def backward(group: list[dict[str, torch.Tensor]]) -> StepOutput:
        group = [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in group]
        loss = accumulate_gradients(model, group, unit, "units", autocast_dtype, scaler)
        return StepOutput(loss, examples=sum(int(b["labels"].shape[0]) for b in group))

    steps = epochs * -(-len(loader) // accumulation_steps) if hasattr(loader, "__len__") else None
    return train_steps(model, optimizer, groups(), backward, steps=steps, grad_clip=max_grad_norm, scaler=scaler,
                       tracker=tracker, postfix=lambda log: {"loss": f"{log.loss[-1]:.3f}"}, progress=progress,
                       desc=desc, leave=False, mininterval=5.0)  # few refreshes: small notebook outputs
