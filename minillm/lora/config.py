"""The LoRA configuration: rank, scale, dropout, which modules to adapt, which to train in full.

The update of an adapted layer is scaled by :math:`\alpha / r`, so its size does not depend on the rank;
``"all-linear"`` adapts every linear layer except the output head, as the common tools do.

Defined in chapter 3.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoRAConfig:
    """Rank ``r``, scale ``alpha`` (the update is multiplied by ``alpha / r``), dropout on the adapter input,
    which modules to adapt (names, or ``"all-linear"``) and which to train in full and save with the adapter."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = "all-linear"
    modules_to_save: tuple[str, ...] = ("classifier",)

    def __post_init__(self):
        if self.r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got r={self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise ValueError(f"target_modules={self.target_modules!r}: pass 'all-linear' or a tuple of names, "
                             f"e.g. ('query', 'value')")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


#: The Anyscale/QLoRA recipe: rank 8, alpha 16, every linear layer of the model (both profiles use it).
LORA_RECIPE = LoRAConfig(r=8, alpha=16.0, dropout=0.1)
