r"""Serve several adapters in one batch: each row of the batch names the adapter it runs with.

One base model in memory, many tasks: for a batch whose row :math:`i` belongs to adapter :math:`a_i`, every LoRA
layer computes the base output for the whole batch once and adds each row's own update,

.. math::

    y_i = W_0 x_i + s_{a_i} B_{a_i} A_{a_i} x_i ,

grouping the rows by adapter so that each group costs two thin matrix products. The name ``"__base__"``
(:data:`~minillm.lora.layers.BASE_ROW`) runs a row on the bare base model; saved modules (a classifier head per
adapter) pick each row's copy the same way. This gives exactly what one forward pass per adapter gives, row by row
(the chapter's tests hold it equal to per-adapter forwards and to ``peft``'s ``adapter_names=`` argument).
Merged weights cannot serve a mixed batch: unmerge first.

Defined in chapter 3.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import nn

from minillm.lora.layers import BASE_ROW, LoRALayer
from minillm.lora.model import adapter_modules


@contextmanager
def adapter_per_row(model: nn.Module, adapter_names: Sequence[str]) -> Iterator[nn.Module]:
    """``with adapter_per_row(model, ["sql", "__base__", "sql", "reviews"]): model(batch)`` — row ``i`` of every
    forward pass inside runs with adapter ``adapter_names[i]``.

    Raises:
        ValueError: a name the model has no adapter for, an empty list, or a model without adapters.
        RuntimeError: an adapter is merged into the base weights (call ``unmerge_lora(model)`` first).
    """
    known = set(getattr(model, "lora_configs", {}))
    if not known:
        raise ValueError("the model has no LoRA adapters; inject_lora or load_adapter first")
    if isinstance(adapter_names, str) or not len(adapter_names):
        raise ValueError(f"adapter_names must be a list with one adapter name per row, got {adapter_names!r}")
    unknown = sorted(set(adapter_names) - known - {BASE_ROW})
    if unknown:
        raise ValueError(f"no adapter(s) {unknown} on this model; it has {sorted(known)} "
                         f"(use {BASE_ROW!r} for rows that should run on the base model)")
    modules = [m for _, m in adapter_modules(model)]
    merged = [m.merged_adapters for m in modules if isinstance(m, LoRALayer) and m.merged]
    if merged:
        raise RuntimeError(f"adapter {merged[0]} is merged into the base weights, so rows cannot choose adapters; "
                           f"call unmerge_lora(model) first")
    rows = list(adapter_names)
    for m in modules:
        m.row_adapters = rows
    try:
        yield model
    finally:
        for m in modules:
            m.row_adapters = None
