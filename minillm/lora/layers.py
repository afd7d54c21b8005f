r"""Low-rank adaptation (LoRA): freeze the pretrained weight, learn a rank-:math:`r` update beside it.

For a frozen linear layer :math:`W_0 \in \mathbb{R}^{d_{out} \times d_{in}}`, LoRA adds two small matrices
:math:`A \in \mathbb{R}^{r \times d_{in}}` and :math:`B \in \mathbb{R}^{d_{out} \times r}` with :math:`r \ll d`:

.. math::

    h = W_0 x + s\, B A\, \mathrm{dropout}(x), \qquad \Delta W = s\, B A, \qquad s = \alpha / r
    \ \ (\text{or } \alpha/\sqrt r)

:math:`A` starts Kaiming-uniform (:math:`a=\sqrt5`) and :math:`B` starts at zero, so :math:`\Delta W = 0` and
the adapted model starts *exactly* at the pretrained one. Merging folds :math:`\Delta W` into :math:`W_0` (no extra
cost at inference); ``merge(safe_merge=True)`` computes the merged weight in a copy first and refuses NaN or inf;
unmerging subtracts it again. Several named adapters can live on one layer: one is active, or — for batched
serving — each row of a batch names its own (:mod:`minillm.lora.mixed_batch`).

:class:`LoRALinear` wraps ``nn.Linear`` and ``transformers``' ``Conv1D`` (GPT-2's linear layer, which stores its
weight transposed, :math:`(d_{in}, d_{out})`: the update is transposed when merged, as ``peft``'s
``fan_in_fan_out``). Parameter names follow the common convention (``base_layer``, ``lora_A.<adapter>.weight``),
so weights can be exchanged with the ``peft`` library one-to-one.

Defined in chapter 3.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from minillm.lora.config import LoRAConfig

#: The name a row of a mixed batch gives to run the base model without any adapter (as ``peft`` spells it).
BASE_ROW = "__base__"


def conv1d_class() -> type | None:
    """``transformers.pytorch_utils.Conv1D`` (GPT-2's transposed linear layer), or None without ``transformers``."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a course dependency
        return None
    return Conv1D


def is_linear_like(module: nn.Module) -> bool:
    """``nn.Linear`` or ``Conv1D``: the layers ``"all-linear"`` adapts."""
    conv1d = conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


class LoRALayer(nn.Module):
    """Adapter bookkeeping shared by :class:`LoRALinear` and :class:`~minillm.lora.embedding.LoRAEmbedding`:
    named adapters, the active one, a disable switch, which adapters are merged into the base weight, and the
    per-row adapter names of a mixed batch."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.disabled = False
        self.merged_adapters: list[str] = []
        self.row_adapters: list[str] | None = None  # set by minillm.lora.mixed_batch.adapter_per_row

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
        """The update in the base weight's own layout."""
        raise NotImplementedError  # each subclass knows the shape of its own update

    def merged_weight(self, name: str | None = None) -> torch.Tensor:
        """``W0 + ΔW`` for adapter ``name`` (default: the active one), as a new tensor: the base is not touched."""
        name = name or self.active_adapter
        weight = self.base_layer.weight
        return weight.detach() + self.delta_weight(name).detach().to(weight.dtype)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """W0 <- W0 + ΔW for the active adapter: the layer then costs exactly what the base layer costs.

        ``safe_merge=True`` computes the merged weight in a copy and raises ``ValueError`` (leaving W0 as it was)
        when it holds NaN or inf, the sign of an adapter that diverged in training.
        """
        name = self.active_adapter
        if name is None or name in self.merged_adapters:
            return
        if safe_merge:
            merged = self.merged_weight(name)
            if not torch.isfinite(merged).all():
                raise ValueError(f"merging adapter {name!r} would put NaN or inf into the base weight (the adapter "
                                 f"diverged in training); the weight is unchanged: retrain it at a lower learning "
                                 f"rate, or load an earlier adapter file")
            self.base_layer.weight.copy_(merged)
        else:
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

    def _row_groups(self, batch: int) -> dict[str, torch.Tensor]:
        """Row indices per adapter name of a mixed batch (names this layer lacks, and BASE_ROW, get no update)."""
        rows = self.row_adapters
        if len(rows) != batch:
            raise ValueError(f"the mixed batch names {len(rows)} adapters but the batch has {batch} rows; "
                             f"give one adapter name per row")
        if self.merged:
            raise RuntimeError(f"adapter(s) {self.merged_adapters} are merged into the base weight, so rows cannot "
                               f"choose adapters; call unmerge_lora(model) before a mixed batch")
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(rows):
            if name != BASE_ROW and name in self.scaling:
                groups.setdefault(name, []).append(i)
        return {name: torch.tensor(idx) for name, idx in groups.items()}


class LoRALinear(LoRALayer):
    """``nn.Linear`` (or ``Conv1D``) plus low-rank adapters: ``y = base(x) + s · B(A(dropout(x)))``."""

    def __init__(self, base_layer: nn.Module):
        if not is_linear_like(base_layer):
            raise TypeError(f"LoRALinear wraps nn.Linear or transformers' Conv1D, got {type(base_layer).__name__}; "
                            f"use LoRAEmbedding for nn.Embedding")
        super().__init__(base_layer)
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)  # Conv1D stores W as (d_in, d_out)
        w = base_layer.weight
        self.in_features, self.out_features = (w.shape[0], w.shape[1]) if self.fan_in_fan_out else (w.shape[1], w.shape[0])
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()

    def add_adapter(self, name: str, config: LoRAConfig) -> None:
        if name in self.scaling:
            raise ValueError(f"adapter {name!r} already exists on this layer; pick another name")
        if name == BASE_ROW:
            raise ValueError(f"{BASE_ROW!r} is reserved for rows of a mixed batch that use no adapter; pick another name")
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
        delta = (self.lora_B[name].weight @ self.lora_A[name].weight) * self.scaling[name]  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def _update(self, name: str, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.lora_A[name].weight.dtype)
        return self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))) * self.scaling[name]  # (..., out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"LoRALinear expects inputs with last dimension {self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        if self.row_adapters is not None and not self.disabled:
            groups = self._row_groups(x.shape[0])
            result = self.base_layer(x)  # (B, ..., out)
            for name, idx in groups.items():  # each row's own adapter, on its rows only
                result[idx] = result[idx] + self._update(name, x[idx]).to(result.dtype)
            return result
        use_adapter = self._use_adapter()  # first: it may unmerge, changing the base weight
        result = self.base_layer(x)  # (..., out)
        if not use_adapter:
            return result
        return result + self._update(self.active_adapter, x).to(result.dtype)

    def extra_repr(self) -> str:
        kind = ", Conv1D (fan_in_fan_out)" if self.fan_in_fan_out else ""
        return f"in={self.in_features}, out={self.out_features}{kind}, adapters={self.adapter_names}"
