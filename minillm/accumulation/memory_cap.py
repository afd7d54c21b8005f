r"""An activation-memory cap: refuse a micro-batch whose saved activations exceed a budget, and say what fits.

Training memory is a fixed part — weights, gradients, AdamW's moments (:func:`minillm.core.memory.
training_state_bytes`) — plus the tensors autograd saves for the backward pass, which grow with the number of
tokens in one forward pass. For a micro-batch of :math:`m` sequences padded to :math:`T` tokens

.. math::

    A(m, T) \approx m \cdot a(T), \qquad a(T) = c_1 T + c_2 T^2 \text{ (attention probabilities)},

so on an accelerator that leaves :math:`C` bytes for activations, the largest micro-batch that fits is
:math:`m^\ast = \lfloor C / a(T) \rfloor`, and a batch of :math:`B` examples needs accumulation over
:math:`k = \lceil B / m^\ast \rceil` micro-batches.

:func:`activation_cap` enforces :math:`C` the way a GPU does — the forward pass fails as soon as the saved
tensors pass the budget, so the refused micro-batch never holds more than about :math:`C` — but on any device,
from autograd's own count of what it saves (the rules of :func:`minillm.core.memory.saved_activation_bytes`:
each storage once, parameters and autocast's weight copies excluded). :func:`check_micro_batch` runs one
forward under the cap and, when it is refused, measures one example to name the micro-batch size and the
accumulation steps that fit.

Defined in chapter 4 (gradient accumulation).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from minillm.core.memory import _is_parameter_copy

MiB = 2**20


def _mib(n: float) -> str:
    return f"{n / MiB:.0f} MiB" if n >= 100 * MiB else f"{n / MiB:.3g} MiB"


class ActivationCapExceeded(RuntimeError):
    """A forward pass saved more activations than the cap allows (the message says what fits instead)."""

    def __init__(self, message: str, saved_bytes: int, cap_bytes: int):
        super().__init__(message)
        self.saved_bytes = saved_bytes
        self.cap_bytes = cap_bytes


class ActivationMeter:
    """The running count of bytes autograd has saved inside :func:`activation_cap`."""

    def __init__(self, cap_bytes: int | None):
        self.cap_bytes = cap_bytes
        self.bytes = 0


def _check_cap(cap_bytes) -> None:
    if isinstance(cap_bytes, bool) or not isinstance(cap_bytes, (int, float)) or not math.isfinite(cap_bytes) \
            or cap_bytes <= 0:
        raise ValueError(f"cap_bytes must be a positive, finite number of bytes, got {cap_bytes!r}; "
                         "e.g. 512 * 2**20 for 512 MiB, or None for no cap")


@contextmanager
def activation_cap(model: nn.Module, cap_bytes: int | None) -> Iterator[ActivationMeter]:
    """Count the activations saved inside the block; raise :class:`ActivationCapExceeded` past ``cap_bytes``.

    ``cap_bytes=None`` only counts. The count follows autograd, so it is the same on a CPU and a GPU.
    """
    if cap_bytes is not None:
        _check_cap(cap_bytes)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    meter = ActivationMeter(cap_bytes)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen and not _is_parameter_copy(t):
            seen[ptr] = storage.nbytes()
            meter.bytes += seen[ptr]
            if cap_bytes is not None and meter.bytes > cap_bytes:
                raise ActivationCapExceeded(
                    f"the forward pass saved {_mib(meter.bytes)} of activations, over the cap of {_mib(cap_bytes)}",
                    meter.bytes, int(cap_bytes))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield meter


def _describe(batch: dict[str, torch.Tensor]) -> str:
    ids = batch["input_ids"]
    return f"{ids.shape[0]} × {ids.shape[1]} tokens" if ids.dim() == 2 else f"input of shape {tuple(ids.shape)}"


def check_micro_batch(model: nn.Module, batch: dict[str, torch.Tensor], cap_bytes: int,
                      forward: Callable[[dict[str, torch.Tensor]], object]) -> int:
    """Run ``forward(batch)`` under the cap and return the activation bytes it saved.

    Raises:
        ActivationCapExceeded: when the micro-batch does not fit; the message gives the bytes of one example
            and the ``micro_batch_size`` × ``accumulation_steps`` that keep the same batch under the cap.
        ValueError: for a cap that is not a positive number of bytes, or a batch without ``input_ids``.
    """
    _check_cap(cap_bytes)
    if not isinstance(batch, dict) or "input_ids" not in batch:
        raise ValueError("batch must be a dict with 'input_ids' (and 'attention_mask', 'labels'), "
                         "as minillm.data.collate_padded makes it")
    size = int(batch["input_ids"].shape[0])
    try:
        with activation_cap(model, cap_bytes) as meter:
            out = forward(batch)
        del out
        return meter.bytes
    except ActivationCapExceeded as err:
        refused = err
    one = {k: v[:1] for k, v in batch.items()}  # every row is padded to the same length: any row will do
    with activation_cap(model, None) as meter:
        out = forward(one)
    del out
    per_example = meter.bytes
    where = (f"a micro-batch of {_describe(batch)} passed the activation cap of {_mib(cap_bytes)} "
             f"(it had saved {_mib(refused.saved_bytes)} when it was stopped, of about "
             f"{_mib(size * per_example)}); one example saves {_mib(per_example)}")
    if per_example > cap_bytes:
        raise ActivationCapExceeded(
            f"{where}, so not even a micro-batch of 1 fits: shorten the sequences (max_length), raise the cap, "
            "or recompute activations in the backward pass (gradient checkpointing)", refused.saved_bytes,
            int(cap_bytes)) from None
    most = max(1, min(size, int(cap_bytes // per_example)))
    fits = max(m for m in range(1, most + 1) if size % m == 0)  # a divisor: every optimizer step sees `size`
    steps = size // fits
    raise ActivationCapExceeded(
        f"{where}. Use gradient accumulation: micro_batch_size={fits} with accumulation_steps={steps} keeps "
        f"{fits * steps} examples per optimizer step under the cap", refused.saved_bytes, int(cap_bytes)) from None
