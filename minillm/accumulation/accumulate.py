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
sequences, padding, or a short last micro-batch. The reference scripts divide every micro-batch's mean by
the configured ``k`` whatever the size of the group it falls in (``"mean_over_k"``).

When the optimizer steps is :mod:`minillm.accumulation.stepping`'s business: after every ``k``-th micro-batch
and after the last one, so a short tail group still updates the model, normalised by its own ``N``.

Defined in chapter 4 (gradient accumulation).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from minillm.accumulation.memory_cap import activation_cap
from minillm.accumulation.stepping import STEP_RULES, step_groups, step_plan
from minillm.core.training import StepOutput, TrainLog, train_steps

IGNORE_INDEX = -100  # label value that contributes no loss (padding), as in torch's cross_entropy
UNITS = ("examples", "tokens")
NORMALISATIONS = ("units", "mean_of_means", "mean_over_k")


def _check_batch(batch, unit: str) -> None:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}: 'examples' for a classifier, "
                         "'tokens' for a language model")
    if not isinstance(batch, dict) or "input_ids" not in batch or "labels" not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"a micro-batch must be a dict with 'input_ids', 'attention_mask' and 'labels' "
                         f"(minillm.data.collate_padded makes one), got {got}")
    labels = batch["labels"]
    want = 1 if unit == "examples" else 2
    if not torch.is_tensor(labels) or labels.dim() != want or labels.dtype != torch.long:
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        dtype = labels.dtype if torch.is_tensor(labels) else None
        raise ValueError(f"unit={unit!r} needs labels of shape {'(B,)' if want == 1 else '(B, T)'} and dtype "
                         f"torch.long, got {shape} {dtype}: class indices per example for 'examples', "
                         "the token ids (IGNORE_INDEX on padding) for 'tokens'")


def count_units(batch: dict[str, torch.Tensor], unit: str) -> int:
    """How many loss terms a batch contributes: its examples, or its non-ignored next-token targets."""
    _check_batch(batch, unit)
    if unit == "examples":
        return int(batch["labels"].shape[0])
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # targets are labels shifted left


def summed_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], unit: str) -> torch.Tensor:
    """The **sum** (not the mean) of the batch's per-unit cross-entropy losses.

    ``unit="examples"``: logits (B, C) against labels (B,). ``unit="tokens"``: a causal LM's logits
    (B, T, V) predict ``labels[:, 1:]`` from positions ``:-1``; ``IGNORE_INDEX`` targets are skipped.
    """
    _check_batch(batch, unit)
    device = next(model.parameters()).device
    if batch["input_ids"].device != device or batch["labels"].device != device:
        raise ValueError(f"the batch is on {batch['input_ids'].device} but the model on {device}: move it first, "
                         "{k: v.to(device) for k, v in batch.items()} (train_accumulated does this for you)")
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    labels = batch["labels"]
    if unit == "examples":
        if logits.dim() != 2:
            raise ValueError(f"unit='examples' needs logits (B, C), got shape {tuple(logits.shape)}; "
                             f"use unit='tokens' for a language model")
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < logits.shape[-1]:
            raise ValueError(f"labels must be class indices in [0, {logits.shape[-1]}), got values "
                             f"{int(labels.min())}..{int(labels.max())}: map them to 0..C-1, or give the model "
                             f"num_labels={int(labels.max()) + 1}")
        return F.cross_entropy(logits.float(), labels, reduction="sum")
    if logits.dim() != 3:
        raise ValueError(f"unit='tokens' needs logits (B, T, V), got shape {tuple(logits.shape)}; "
                         "use unit='examples' for a classifier")
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]           # (B, T-1)
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def accumulate_gradients(model: torch.nn.Module, micro_batches: Sequence[dict[str, torch.Tensor]],
                         unit: str = "examples", normalisation: str = "units", *,
                         accumulation_steps: int | None = None, autocast_dtype: torch.dtype | None = None,
                         scaler=None, activation_cap_bytes: int | None = None) -> float:
    """Back-propagate one optimizer step's micro-batches into ``.grad``; return the step's loss.

    ``normalisation="units"`` divides every summed loss by the step's total unit count ``N`` (the
    full-batch gradient). ``"mean_of_means"`` divides by ``n_j · len(micro_batches)`` — the bug, kept to
    demonstrate it; ``"mean_over_k"`` by ``n_j · accumulation_steps`` — the reference scripts' ``loss / k``.
    Each forward pass runs under :func:`minillm.accumulation.memory_cap.activation_cap` when
    ``activation_cap_bytes`` is set.

    Raises:
        ValueError: an unknown normalisation, no micro-batch, no loss unit at all, a malformed micro-batch,
            or a loss that is not finite (the message says where to look).
        ActivationCapExceeded: a micro-batch saved more activations than ``activation_cap_bytes``.
    """
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    if normalisation == "mean_over_k" and (not isinstance(accumulation_steps, int) or accumulation_steps < 1):
        raise ValueError("normalisation='mean_over_k' divides by the configured k: pass accumulation_steps=k")
    if isinstance(micro_batches, dict):
        raise ValueError("micro_batches must be a list of micro-batch dicts; wrap a single batch as [batch]")
    if not micro_batches:
        raise ValueError("an optimizer step needs at least one micro-batch")
    device_type = next(model.parameters()).device.type
    counts = [count_units(b, unit) for b in micro_batches]
    total = sum(counts)
    if total == 0:
        raise ValueError("these micro-batches contain no loss units: every target is IGNORE_INDEX; "
                         "check the labels (only padding should be ignored)")
    step_loss = 0.0
    for j, (batch, n) in enumerate(zip(micro_batches, counts)):
        if n == 0:
            continue  # nothing to learn from an all-padding micro-batch; the mean would be 0/0
        mixed = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
        with mixed, activation_cap(model, activation_cap_bytes):
            loss_sum = summed_loss(model, batch, unit)  # forward in reduced precision; summed in fp32
        scale = {"units": total, "mean_of_means": n * len(micro_batches),
                 "mean_over_k": n * (accumulation_steps or 1)}[normalisation]
        loss = loss_sum / scale
        value = loss.item()
        if not math.isfinite(value):
            raise ValueError(f"the loss of micro-batch {j} is {value}: the weights or the inputs are no longer "
                             "finite (a learning rate too high, or fp16 without a gradient scaler); lower the "
                             "learning rate or clip the gradient norm (max_grad_norm)")
        (scaler.scale(loss) if scaler is not None else loss).backward()
        step_loss += value
    return step_loss


def train_accumulated(model: torch.nn.Module, loader: Iterable[dict[str, torch.Tensor]],
                      optimizer: torch.optim.Optimizer, accumulation_steps: int, *, unit: str = "examples",
                      epochs: int = 1, rule: str = "every_k", autocast_dtype: torch.dtype | None = None,
                      max_grad_norm: float | None = None, activation_cap_bytes: int | None = None,
                      tracker=None, progress: bool = True, desc: str = "train") -> TrainLog:
    """Train with gradient accumulation: one optimizer step per ``accumulation_steps`` micro-batches.

    The shared step loop (:func:`minillm.core.training.train_steps`) with :func:`accumulate_gradients` as each
    step's backward. ``rule`` says which micro-batches each step applies (:mod:`minillm.accumulation.stepping`:
    ``"every_k"``, or one of the reference scripts' rules, which also scale each loss by ``1/k`` as they do).
    ``autocast_dtype`` runs forward passes in mixed precision (``torch.bfloat16`` on CPU or GPU;
    ``torch.float16`` on CUDA adds a gradient scaler). ``activation_cap_bytes`` refuses any micro-batch that
    saves more activations. Each step's loss goes to ``tracker`` (mlflow).
    """
    if rule not in STEP_RULES:
        raise ValueError(f"unknown stepping rule {rule!r}; choose one of {STEP_RULES} ('every_k' is the correct one)")
    if hasattr(loader, "__len__") and len(loader) == 0:
        raise ValueError("the loader is empty: there is nothing to train on (check train_size and the split)")
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 and device.type == "cuda" else None
    normalisation = "units" if rule == "every_k" else "mean_over_k"

    def backward(group: list[dict[str, torch.Tensor]]) -> StepOutput:
        group = [{k: v.to(device, non_blocking=True) for k, v in b.items()} for b in group]
        loss = accumulate_gradients(model, group, unit, normalisation, accumulation_steps=accumulation_steps,
                                    autocast_dtype=autocast_dtype, scaler=scaler,
                                    activation_cap_bytes=activation_cap_bytes)
        return StepOutput(loss, examples=sum(int(b["labels"].shape[0]) for b in group))

    groups = step_groups(loader, accumulation_steps, rule, epochs)  # validates k and epochs
    steps = epochs * step_plan(len(loader), accumulation_steps, rule).steps if hasattr(loader, "__len__") else None
    return train_steps(model, optimizer, groups, backward, steps=steps, grad_clip=max_grad_norm, scaler=scaler,
                       tracker=tracker, postfix=lambda log: {"loss": f"{log.loss[-1]:.3f}"}, progress=progress,
                       desc=desc, leave=False, mininterval=5.0)  # few refreshes: small notebook outputs
