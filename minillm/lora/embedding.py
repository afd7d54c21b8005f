r"""LoRA for embedding tables, and modules trained in full beside the adapters (a fresh classifier head).

For an ``nn.Embedding`` with table :math:`E \in \mathbb{R}^{V \times d}` the update is
:math:`\Delta E = s\,(BA)^\top` with :math:`A \in \mathbb{R}^{r \times V}`, :math:`B \in \mathbb{R}^{d \times r}`;
the forward pass looks up :math:`r` values per token in :math:`A^\top` and multiplies only those by
:math:`B^\top`. The initialisation is reversed with respect to the linear layer (:math:`A = 0`,
:math:`B \sim \mathcal{N}(0, 1)`) so that :math:`\Delta E = 0` at step 0 and yet a gradient flows.

Defined in chapter 3.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from minillm.lora.config import LoRAConfig
from minillm.lora.layers import BASE_ROW, LoRALayer


class LoRAEmbedding(LoRALayer):
    """``nn.Embedding`` plus low-rank adapters. A row lookup in ``Aᵀ`` (r values per token) then ``B``:
    ``ΔE = s (B A)ᵀ`` of shape (num_embeddings, embedding_dim). No dropout: the input is an index."""

    def __init__(self, base_layer: nn.Embedding):
        if not isinstance(base_layer, nn.Embedding):
            raise TypeError(f"LoRAEmbedding wraps nn.Embedding, got {type(base_layer).__name__}; "
                            f"use LoRALinear for linear layers")
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def add_adapter(self, name: str, config: LoRAConfig) -> None:
        if name in self.scaling:
            raise ValueError(f"adapter {name!r} already exists on this layer; pick another name")
        if name == BASE_ROW:
            raise ValueError(f"{BASE_ROW!r} is reserved for rows of a mixed batch that use no adapter; pick another name")
        w = self.base_layer.weight  # (num_embeddings, dim)
        # Reversed initialisation: A = 0 and B random, so ΔE = 0 at step 0 yet A gets a gradient.
        self.lora_embedding_A[name] = nn.Parameter(torch.zeros(config.r, w.shape[0], device=w.device, dtype=w.dtype))
        self.lora_embedding_B[name] = nn.Parameter(torch.randn(w.shape[1], config.r, device=w.device, dtype=w.dtype))
        self.scaling[name] = config.scaling
        if self.active_adapter is None:
            self.active_adapter = name

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_embedding_B[name] @ self.lora_embedding_A[name]).T * self.scaling[name]  # (num, dim)

    def _update(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        after_a = F.embedding(ids, self.lora_embedding_A[name].T, base.padding_idx, base.max_norm,
                              base.norm_type, base.scale_grad_by_freq, base.sparse)  # (..., r)
        return (after_a @ self.lora_embedding_B[name].T) * self.scaling[name]  # (..., dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"LoRAEmbedding looks up integer token ids, got a {ids.dtype} tensor; "
                            f"pass the ids (torch.long), not embeddings")
        if self.row_adapters is not None and not self.disabled:
            groups = self._row_groups(ids.shape[0])
            result = self.base_layer(ids)  # (B, ..., dim)
            for name, idx in groups.items():
                result[idx] = result[idx] + self._update(name, ids[idx])
            return result
        use_adapter = self._use_adapter()  # first: it may unmerge, changing the base weight
        result = self.base_layer(ids)  # (..., dim)
        if not use_adapter:
            return result
        return result + self._update(self.active_adapter, ids)

    def extra_repr(self) -> str:
        w = self.base_layer.weight
        return f"num_embeddings={w.shape[0]}, dim={w.shape[1]}, adapters={self.adapter_names}"


class ModulesToSave(nn.Module):
    """A module trained in full for each adapter (e.g. a fresh classifier head): one copy per adapter, the
    original kept for when adapters are disabled. The copies go into the adapter file."""

    def __init__(self, original_module: nn.Module):
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False
        self.row_adapters: list[str] | None = None

    def add_adapter(self, name: str, config: LoRAConfig | None = None) -> None:
        if name in self.modules_to_save:
            raise ValueError(f"adapter {name!r} already has a copy of this module; pick another name")
        self.modules_to_save[name] = copy.deepcopy(self.original_module)
        if self.active_adapter is None:
            self.active_adapter = name

    def set_adapter(self, name: str) -> None:
        if name not in self.modules_to_save:
            raise KeyError(f"no copy for adapter {name!r}; it has {list(self.modules_to_save)}: "
                           f"add_adapter({name!r}) first")
        self.active_adapter = name

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.row_adapters is not None and not self.disabled:
            if len(self.row_adapters) != x.shape[0]:
                raise ValueError(f"the mixed batch names {len(self.row_adapters)} adapters but the batch has "
                                 f"{x.shape[0]} rows; give one adapter name per row")
            result = None
            for name in dict.fromkeys(self.row_adapters):  # each row through its adapter's copy
                idx = torch.tensor([i for i, n in enumerate(self.row_adapters) if n == name])
                module = self.modules_to_save[name] if name in self.modules_to_save else self.original_module
                out = module(x[idx], *args, **kwargs)
                if result is None:
                    result = out.new_empty((x.shape[0], *out.shape[1:]))
                result[idx] = out
            return result
        if self.disabled or self.active_adapter is None:
            return self.original_module(x, *args, **kwargs)
        return self.modules_to_save[self.active_adapter](x, *args, **kwargs)
