r"""The training core every chapter shares: one AdamW builder, one learning-rate schedule, one step loop.

An optimizer step is the same in every chapter: set the learning rate :math:`\eta_t`, clear the gradients,
back-propagate this step's loss (a chapter's own ``backward`` function: one batch, several accumulated
micro-batches, several subnets), optionally clip the gradient norm, step. Chapters add only what is theirs.

The schedule (:func:`warmup_schedule`) is linear warm-up over :math:`t_w` steps, then a decay from the peak
:math:`\eta_{max}` to a floor :math:`\eta_{min}` at step :math:`T`, cosine or linear:

.. math::

    \eta_t = \begin{cases} \eta_{max}\,\frac{t+1}{t_w} & t < t_w \\
    \eta_{min} + (\eta_{max}-\eta_{min})\, d\!\left(\frac{t-t_w}{T-t_w}\right) & t \ge t_w \end{cases}
    \qquad d_{\cos}(p) = \tfrac12(1+\cos\pi p),\ \ d_{lin}(p) = 1 - p .

AdamW (:func:`make_adamw`) decays either every trainable tensor or only matrices (biases and LayerNorm gains
are not pulled towards zero).

Defined in the foundation; chapters 1 (language model), 3 (classifier fine-tuning), 4 (gradient
accumulation) and 6 (UPDP) train through :func:`train_steps`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, TypeVar

import torch
from torch import nn
from tqdm import tqdm

B = TypeVar("B")
DecayRule = Literal["matrices", "all"]
DecayShape = Literal["cosine", "linear", "constant"]


def make_adamw(model: nn.Module, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
               decay: DecayRule = "matrices", fused: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model``.

    ``decay="matrices"`` applies ``weight_decay`` to tensors with 2 or more dimensions only; ``"all"`` to every
    trainable tensor (what ``torch.optim.AdamW(model.parameters())`` does). ``fused=True`` updates all tensors in
    one kernel (CPU and CUDA): the same arithmetic, several times faster when there are many tensors.

    Raises:
        ValueError: when nothing is trainable, or an option is unknown.
    """
    if decay not in ("matrices", "all"):
        raise ValueError(f"decay must be 'matrices' or 'all', got {decay!r}")
    if lr <= 0 or not math.isfinite(lr):
        raise ValueError(f"learning rate must be a positive finite number, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter: nothing to train "
                         "(did you freeze everything without injecting LoRA, or set trainable_layers=0?)")
    if decay == "all":
        groups = [{"params": params, "weight_decay": weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def warmup_schedule(step: int, total: int, peak: float, warmup: int = 0, floor: float = 0.0,
                    shape: DecayShape = "cosine") -> float:
    """The learning rate at ``step`` (0-based): linear warm-up, then ``shape`` decay to ``floor`` at ``total``."""
    if shape not in ("cosine", "linear", "constant"):
        raise ValueError(f"shape must be 'cosine', 'linear' or 'constant', got {shape!r}")
    if step < warmup:
        return peak * (step + 1) / warmup
    if shape == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if shape == "cosine" else 1.0 - progress
    return floor + (peak - floor) * decay


@dataclass
class StepOutput:
    """What one step's ``backward`` reports: the loss it back-propagated and how much data it saw."""

    loss: float
    examples: int = 0
    tokens: int = 0


@dataclass
class TrainLog:
    """Every optimizer step of a run: loss, gradient norm (when measured), learning rate and time."""

    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # before clipping
    lr: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    examples: int = 0
    tokens: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time, all threads: a property of the machine and its load

    @property
    def steps(self) -> int:
        return len(self.loss)

    @property
    def examples_per_second(self) -> float:
        return self.examples / sum(self.step_seconds) if self.step_seconds else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / sum(self.step_seconds) if self.step_seconds else float("nan")


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[B],
                backward: Callable[[B], StepOutput | float], *, steps: int | None = None,
                lr_at: Callable[[int], float] | None = None, grad_clip: float | None = None, scaler=None,
                tracker=None, log_every: int = 1, log_name: str = "train_loss",
                on_step: Callable[[int, TrainLog], None] | None = None,
                postfix: Callable[[TrainLog], dict] | None = None,
                progress: bool = True, desc: str = "train", leave: bool = True,
                mininterval: float = 5.0) -> TrainLog:
    """Run one optimizer step per item of ``batches`` (at most ``steps`` of them).

    Each step: the learning rate ``lr_at(step)`` (if given) goes into every parameter group, gradients are
    cleared, ``backward(batch)`` back-propagates (and returns the loss or a :class:`StepOutput`), the gradient
    norm is clipped to ``grad_clip`` (``math.inf``: measured, not clipped; None: neither), and the optimizer
    steps — through ``scaler`` (a ``torch.amp.GradScaler``) when one is given. ``on_step(step, log)`` runs after
    every step (periodic evaluation); ``tracker`` (:class:`minillm.core.tracking.Tracker`) gets the loss every
    ``log_every`` steps.
    """
    if steps is not None and steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be positive (math.inf to measure without clipping) or None, got {grad_clip}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    device = params[0].device if params else torch.device("cpu")
    log = TrainLog()
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=leave, mininterval=mininterval)
    t0, c0 = time.perf_counter(), time.process_time()
    for step, batch in enumerate(batches):
        if steps is not None and step >= steps:
            break
        if lr_at is not None:
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = backward(batch)
        out = out if isinstance(out, StepOutput) else StepOutput(float(out))
        if scaler is not None:
            scaler.unscale_(optimizer)
        if grad_clip is not None:
            log.grad_norm.append(float(torch.nn.utils.clip_grad_norm_(params, grad_clip)))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        log.step_seconds.append(time.perf_counter() - start)
        log.loss.append(out.loss)
        log.lr.append(optimizer.param_groups[0]["lr"])
        log.examples += out.examples
        log.tokens += out.tokens
        if tracker is not None and step % log_every == 0:
            metrics = {log_name: out.loss}
            if log.grad_norm:
                metrics["grad_norm"] = log.grad_norm[-1]
            tracker.log_metrics(metrics, step=step)
        if on_step is not None:
            on_step(step, log)
        bar.update(1)
        if postfix is not None:
            bar.set_postfix(postfix(log), refresh=False)  # shown at the next (rate-limited) refresh
    bar.close()
    log.wall_seconds = time.perf_counter() - t0
    log.cpu_seconds = time.process_time() - c0
    return log
