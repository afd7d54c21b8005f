r"""What training keeps in memory, counted exactly: the state that lives for the whole run, and the
activations autograd saves for one backward pass.

* State (independent of the batch): weights, gradients of the trainable ones, and the optimizer's moments —
  AdamW keeps two per trainable parameter, so in fp32 a full fine-tune holds :math:`4 \cdot 4 = 16` bytes per
  parameter.
* Activations (they grow with the batch): every tensor autograd saves for the backward pass, counted once per
  storage, weights excluded.

Defined in the foundation; chapters 3 (LoRA) and 4 (gradient accumulation) report memory with these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class StateBytes:
    """Bytes held for the whole of training."""

    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer

    def as_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer, "total": self.total}


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> StateBytes:
    """Weights, gradients of the trainable weights and optimizer state (shared tensors counted once).

    Without an optimizer that has taken a step, AdamW's two moments per trainable parameter are assumed
    (what :func:`minillm.core.training.make_adamw` allocates at its first step).
    """
    params = list({id(p): p for p in model.parameters()}.values())
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    if optimizer is not None and optimizer.state:
        optim = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                    for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    else:
        optim = 2 * grads
    return StateBytes(weights, grads, optim)


def _is_parameter_copy(t: torch.Tensor) -> bool:
    # Autocast saves a low-precision copy of each weight it multiplies: weights, not activations.
    fn = t.grad_fn
    return (fn is not None and type(fn).__name__ == "ToCopyBackward0"
            and all(type(f).__name__ == "AccumulateGrad" for f, _ in fn.next_functions if f is not None))


def saved_activation_bytes(model: nn.Module, forward: Callable[[], object]) -> int:
    """Bytes of the tensors autograd saves for backward while ``forward()`` runs (parameters excluded).

    Each storage is counted once (views share it); the reduced-precision weight copies autocast makes are not
    activations and are left out. This is the memory that scales with the (micro-)batch.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and not _is_parameter_copy(t):
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(saved.values())
