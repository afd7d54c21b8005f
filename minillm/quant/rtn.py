r"""Round-to-nearest (RTN): the baseline every smarter quantizer is measured against.

Each weight is rounded independently onto its min-max grid,

.. math::

    \hat W_{ij} = s_{g(j),i}\left(\mathrm{clamp}\left(\lfloor W_{ij}/s_{g(j),i}\rceil + z_{g(j),i}, 0, 2^b-1\right) - z_{g(j),i}\right),

which minimises :math:`\|W - \hat W\|_F^2` entry by entry but ignores what the layer is fed: it
minimises the wrong objective. GPTQ minimises the layer's output error
:math:`\mathrm{tr}\big((W-\hat W) H (W-\hat W)^\top\big)` instead (see :mod:`minillm.quant.hessian`).

Defined in chapter 5.
"""

from __future__ import annotations

import torch

from minillm.quant.quantizer import QuantGrid, check_weight, grid_from_weight


def rtn_quantize(W: torch.Tensor, bits: int = 4, groupsize: int = -1, sym: bool = False) -> tuple[torch.Tensor, QuantGrid]:
    """Round ``W`` (N, K) to nearest on its min-max grid -> (dequantized weight (N, K) float32, grid)."""
    check_weight(W)
    W = W.detach().float()
    grid = grid_from_weight(W, bits, groupsize, sym)
    return grid.dequantize(grid.codes(W)), grid
