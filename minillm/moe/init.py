r"""Weight initialisation of the MoE language model: Kaiming, Glorot, or chapter 1's GPT-2 rule.

For a weight matrix with fan-in :math:`n_{in}` and fan-out :math:`n_{out}`:

* **Kaiming** (He) normal, :math:`\sigma = \sqrt{2 / n_{in}}` — keeps the variance of ReLU activations constant
  through a layer; makeMoE applies it to every linear layer.
* **Glorot** (Xavier) normal, :math:`\sigma = \sqrt{2 / (n_{in} + n_{out})}` — balances the forward and backward
  variance of linear units.
* **GPT-2** (chapter 1): :math:`\sigma = 0.02`, and :math:`0.02 / \sqrt{2L}` for the projections that write into
  the residual stream (attention's output projection, each expert's second matrix, the dense MLP's second
  matrix), so the residual stream's variance does not grow with the depth :math:`L`.

Biases start at zero, embeddings at :math:`\mathcal{N}(0, 0.02^2)`; a head tied to the embedding keeps the
embedding's init. An :class:`~minillm.moe.experts.ExpertBank`'s stacked weights are initialised expert by
expert, with each expert's own fan-in and fan-out, as separate ``nn.Linear`` layers would be.

Defined in chapter 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from minillm.moe.config import INIT_NAMES, InitName
from minillm.moe.experts import ExpertBank


def init_matrix(w: torch.Tensor, scheme: InitName, residual: bool = False, n_layer: int = 1) -> None:
    """Initialise one (out, in) weight matrix in place with ``scheme``."""
    if scheme == "kaiming":
        nn.init.kaiming_normal_(w, nonlinearity="relu")
    elif scheme == "glorot":
        nn.init.xavier_normal_(w)
    elif scheme == "gpt2":
        nn.init.normal_(w, mean=0.0, std=0.02 / math.sqrt(2 * n_layer) if residual else 0.02)
    else:
        raise ValueError(f"init must be one of {INIT_NAMES}, got {scheme!r}")


def _in_mlp(name: str) -> bool:
    # inside a block's MLP part: the SparseMoE (experts, router, noise) or the dense baseline's MLP
    return ".moe." in f".{name}." or name.endswith(".moe")


def init_weights(model: nn.Module, scheme: InitName, expert_scheme: InitName | None = None,
                 n_layer: int | None = None) -> None:
    """Initialise every Linear, expert bank and embedding of ``model``.

    ``scheme`` applies everywhere; ``expert_scheme`` (when given) overrides it for the MLP part of each block —
    the experts (or the dense MLP) and the router — so that attention and experts can be studied apart.
    ``n_layer`` (default: ``len(model.blocks)``) sets the GPT-2 residual scale.
    """
    for s in (scheme, expert_scheme):
        if s is not None and s not in INIT_NAMES:
            raise ValueError(f"init must be one of {INIT_NAMES}, got {s!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"init_weights needs an nn.Module (e.g. a MoELM), got {type(model).__name__}")
    n_layer = n_layer or len(getattr(model, "blocks", [None]))
    tied = getattr(getattr(model, "lm_head", None), "weight", None) is getattr(getattr(model, "wte", None), "weight", 0)
    with torch.no_grad():
        for name, module in model.named_modules():
            s = expert_scheme if (expert_scheme is not None and _in_mlp(name)) else scheme
            if isinstance(module, nn.Linear):
                if not (tied and name == "lm_head"):
                    residual = name.endswith("attn.c_proj") or name.endswith("moe.fc2")
                    init_matrix(module.weight, s, residual, n_layer)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, ExpertBank):
                for e in range(len(module)):
                    init_matrix(module.w1[e], s, False, n_layer)  # (H, C) view: expert e's first Linear
                    init_matrix(module.w2[e], s, True, n_layer)  # (C, H): its residual projection
                nn.init.zeros_(module.b1)
                nn.init.zeros_(module.b2)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
