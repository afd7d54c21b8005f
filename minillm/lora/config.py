r"""The LoRA configuration: rank, scale, dropout, which modules to adapt, which to train in full.

The update of an adapted layer is :math:`s \cdot BA` with the scale

.. math::

    s = \frac{\alpha}{r} \quad\text{(LoRA)} \qquad\text{or}\qquad s = \frac{\alpha}{\sqrt r}
    \quad\text{(rank-stabilised LoRA, ``use_rslora=True``)} .

With :math:`\alpha/r` the update of a higher-rank adapter is scaled down so much that it learns more slowly; the
rank-stabilised scale :math:`\alpha/\sqrt r` keeps the size of the update's effect independent of the rank
(Kalajdzievski, 2023). ``"all-linear"`` adapts every ``nn.Linear`` (and ``transformers``' ``Conv1D``, GPT-2's
linear layer) except the output head, as the common tools do.

Defined in chapter 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LoRAConfig:
    """Rank ``r``, scale ``alpha`` (the update is multiplied by ``alpha / r``, or ``alpha / sqrt(r)`` with
    ``use_rslora``), dropout on the adapter input, which modules to adapt (names, or ``"all-linear"``) and which
    to train in full and save with the adapter."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = "all-linear"
    modules_to_save: tuple[str, ...] = ("classifier",)
    use_rslora: bool = False

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got r={self.r!r}; the recipe uses r=8")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a positive finite number, got alpha={self.alpha!r}; "
                             f"the recipe uses alpha=16 (twice the rank)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise ValueError(f"target_modules={self.target_modules!r}: pass 'all-linear' or a tuple of names, "
                             f"e.g. ('query', 'value')")
        if isinstance(self.modules_to_save, str):
            raise ValueError(f"modules_to_save={self.modules_to_save!r} is a string; pass a tuple of names, "
                             f"e.g. ('classifier',), or () for none")

    @property
    def scaling(self) -> float:
        """``alpha / r``, or ``alpha / sqrt(r)`` for rank-stabilised LoRA."""
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r


#: The Anyscale/QLoRA recipe: rank 8, alpha 16, every linear layer of the model (both profiles use it).
LORA_RECIPE = LoRAConfig(r=8, alpha=16.0, dropout=0.1)
