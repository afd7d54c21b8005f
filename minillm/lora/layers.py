r"""Low-rank adaptation (LoRA): freeze the pretrained weight, learn a rank-:math:`r` update beside it.

For a frozen linear layer :math:`W_0 \in \mathbb{R}^{d_{out} \times d_{in}}`, LoRA adds two small matrices
:math:`A \in \mathbb{R}^{r \times d_{in}}` and :math:`B \in \mathbb{R}^{d_{out} \times r}` with :math:`r \ll d`:

.. math::

    h = W_0 x + \frac{\alpha}{r}\, B A\, \mathrm{dropout}(x), \qquad \Delta W = \frac{\alpha}{r} B A

:math:`A` starts Kaiming-uniform (:math:`a=\sqrt5`) and :math:`B` starts at zero, so :math:`\Delta W = 0` and
the adapted model starts *exactly* at the pretrained one. For an embedding table the roles swap
(:math:`A = 0`, :math:`B \sim \mathcal{N}(0, 1)`). Merging folds :math:`\Delta W` into :math:`W_0` (no extra
cost at inference); unmerging subtracts it again. Several named adapters can live on one layer; one is active.

Parameter names follow the common convention (``base_layer``, ``lora_A.<adapter>.weight``,
``lora_embedding_A.<adapter>``), so weights can be exchanged with the ``peft`` library one-to-one.

Defined in chapter 3.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn


from minillm.lora.config import LoRAConfig


class LoRALayer(nn.Module):
    """Adapter bookkeeping shared by :class:`LoRALinear` and :class:`LoRAEmbedding`: named adapters, the active
    one, a disable switch and which adapters are merged into the base weight."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.disabled = False
        self.merged_adapters: list[str] = []

    @property
    def adapter_names(self) -> list[str]:
        return list(self.scaling)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def set_adapter(self, name: str) -> None:
        if name not in self.scaling:
            raise KeyError(f"no adapter {name!r} on this layer; it has {self.adapter_names}. "
                           f"Add it first with add_adapter({name!r}, config).")
        if self.merged and self.merged_adapters != [name]:
            raise RuntimeError(f"adapter(s) {self.merged_adapters} are merged into the base weight; "
                               f"call unmerge() before switching to {name!r}")
        self.active_adapter = name

    def delta_weight(self, name: str) -> torch.Tensor:
        raise NotImplementedError  # each subclass knows the shape of its own update

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + ΔW for the active adapter: the layer then costs exactly what the base layer costs."""
        name = self.active_adapter
        if name is None or name in self.merged_adapters:
            return
        self.base_layer.weight += self.delta_weight(name).to(self.base_layer.weight.dtype)
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 <- W0 - ΔW for every merged adapter (exact up to float rounding)."""
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            self.base_layer.weight -= self.delta_weight(name).to(self.base_layer.weight.dtype)

    def _use_adapter(self) -> bool:
        if self.disabled and self.merged:
            self.unmerge()  # the base model must see W0 alone
        return not self.disabled and not self.merged and self.active_adapter is not None


class LoRALinear(LoRALayer):
    """``nn.Linear`` plus low-rank adapters: ``y = base(x) + (alpha/r) · B(A(dropout(x)))``."""

    def __init__(self, base_layer: nn.Linear):
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base_layer).__name__}; "
                            f"use LoRAEmbedding for nn.Embedding")
        super().__init__(base_layer)
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()

    def add_adapter(self, name: str, config: LoRAConfig) -> None:
        if name in self.scaling:
            raise ValueError(f"adapter {name!r} already exists on this layer; pick another name")
        w = self.base_layer.weight
        self.lora_A[name] = nn.Linear(self.in_features, config.r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B[name] = nn.Linear(config.r, self.out_features, bias=False, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))  # as nn.Linear's default
        nn.init.zeros_(self.lora_B[name].weight)  # B = 0, so ΔW = 0 at step 0
        self.lora_dropout[name] = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling[name] = config.scaling
        if self.active_adapter is None:
            self.active_adapter = name

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"LoRALinear expects inputs with last dimension {self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        use_adapter = self._use_adapter()  # first: it may unmerge, changing the base weight
        result = self.base_layer(x)  # (..., out)
        if not use_adapter:
            return result
        name = self.active_adapter
        x = x.to(self.lora_A[name].weight.dtype)
        update = self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x)))  # (..., r) -> (..., out)
        return result + (update * self.scaling[name]).to(result.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.adapter_names}"


class LoRAEmbedding(LoRALayer):
    """``nn.Embedding`` plus low-rank adapters. A row lookup in ``Aᵀ`` (r values per token) then ``B``:
    ``ΔE = (alpha/r) (B A)ᵀ`` of shape (num_embeddings, embedding_dim). No dropout: the input is an index."""

    def __init__(self, base_layer: nn.Embedding):
        if not isinstance(base_layer, nn.Embedding):
            raise TypeError(f"LoRAEmbedding wraps nn.Embedding, got {type(base_layer).__name__}")
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def add_adapter(self, name: str, config: LoRAConfig) -> None:
        if name in self.scaling:
            raise ValueError(f"adapter {name!r} already exists on this layer; pick another name")
        w = self.base_layer.weight  # (num_embeddings, dim)
        # Reversed initialisation: A = 0 and B random, so ΔE = 0 at step 0 yet B gets a gradient.
        self.lora_embedding_A[name] = nn.Parameter(torch.zeros(config.r, w.shape[0], device=w.device, dtype=w.dtype))
        self.lora_embedding_B[name] = nn.Parameter(torch.randn(w.shape[1], config.r, device=w.device, dtype=w.dtype))
        self.scaling[name] = config.scaling
        if self.active_adapter is None:
            self.active_adapter = name

    def delta_weight(self, name: str) -> torch.Tensor:
        return (self.lora_embedding_B[name] @ self.lora_embedding_A[name]).T * self.scaling[name]  # (num, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        use_adapter = self._use_adapter()  # first: it may unmerge, changing the base weight
        result = self.base_layer(ids)  # (..., dim)
        if not use_adapter:
            return result
        name, base = self.active_adapter, self.base_layer
        after_a = F.embedding(ids, self.lora_embedding_A[name].T, base.padding_idx, base.max_norm,
                              base.norm_type, base.scale_grad_by_freq, base.sparse)  # (..., r)
        return result + (after_a @ self.lora_embedding_B[name].T) * self.scaling[name]  # (..., dim)

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

    def add_adapter(self, name: str, config: LoRAConfig | None = None) -> None:
        import copy

        if name in self.modules_to_save:
            raise ValueError(f"adapter {name!r} already has a copy of this module")
        self.modules_to_save[name] = copy.deepcopy(self.original_module)
        if self.active_adapter is None:
            self.active_adapter = name

    def set_adapter(self, name: str) -> None:
        if name not in self.modules_to_save:
            raise KeyError(f"no copy for adapter {name!r}; it has {list(self.modules_to_save)}")
        self.active_adapter = name

    def forward(self, *args, **kwargs):
        if self.disabled or self.active_adapter is None:
            return self.original_module(*args, **kwargs)
        return self.modules_to_save[self.active_adapter](*args, **kwargs)
