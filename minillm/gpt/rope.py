r"""Rotary position embeddings (RoPE): positions as rotations of the queries and keys.

Split a head vector :math:`x \in \mathbb{R}^{d}` into two halves and read coordinate :math:`i` of the first half
with coordinate :math:`i` of the second as one point of the plane. At position :math:`m`, RoPE rotates that point by
the angle :math:`m\,\theta_i`, with one frequency per pair (Su et al., 2021):

.. math::

    \theta_i = b^{-2i/d}, \qquad
    \begin{pmatrix} x'_i \\ x'_{i+d/2} \end{pmatrix} =
    \begin{pmatrix} \cos m\theta_i & -\sin m\theta_i \\ \sin m\theta_i & \cos m\theta_i \end{pmatrix}
    \begin{pmatrix} x_i \\ x_{i+d/2} \end{pmatrix},
    \qquad i = 0, \dots, d/2 - 1,

i.e. :math:`x' = x \cos(m\theta) + \mathrm{rotate\_half}(x) \sin(m\theta)` with
:math:`\mathrm{rotate\_half}(x) = [-x_{d/2:},\ x_{:d/2}]`. In complex form, :math:`z_i = x_i + \mathrm{i}\,x_{i+d/2}`
becomes :math:`z_i\, e^{\mathrm{i} m \theta_i}`. Rotating the query at :math:`m` and the key at :math:`n` gives

.. math::

    \langle R_m q, R_n k \rangle = \mathrm{Re} \sum_i q_i\, \bar k_i\, e^{\mathrm{i}(m - n)\theta_i},

which depends on the positions only through :math:`m - n`. So a key rotated once, at its own absolute position,
stays valid however far the sequence runs on: that is what lets a KV cache *slide* past the context window
(:mod:`minillm.gpt.kv_cache`), where learned absolute position embeddings force a refill.

This is the "rotate-half" layout of GPT-NeoX and Llama; chapter 1's tests hold it equal to the Llama reference and
to the complex-number form.

Defined in chapter 1.
"""

from __future__ import annotations

import torch
import torch.nn as nn

RopeTables = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (T, head_size)


def rope_frequencies(head_size: int, base: float = 10_000.0) -> torch.Tensor:
    """The ``head_size / 2`` rotation frequencies ``base ** (-2i / head_size)``, highest first."""
    if head_size <= 0 or head_size % 2:
        raise ValueError(f"RoPE rotates pairs of coordinates, so head_size must be a positive even number, "
                         f"got {head_size}; choose n_embd / n_head even")
    if not base > 1.0:
        raise ValueError(f"the RoPE base must be > 1 (10000 in most models), got {base}")
    return base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (hs/2,)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x₁, x₂] -> [-x₂, x₁] over the last dimension: the 90° turn of every (x_i, x_{i+d/2}) pair."""
    if x.dim() == 0 or x.size(-1) % 2:
        raise ValueError(f"rotate_half pairs coordinate i with i + d/2, so the last dimension must be even, got shape "
                         f"{tuple(x.shape)}; use an even head_size")
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., T, hs) by the angles of its positions; ``cos``/``sin`` are (T, hs) from :class:`RotaryEmbedding`."""
    if cos.shape != sin.shape or x.dim() < 2 or tuple(cos.shape) != tuple(x.shape[-2:]):
        raise ValueError(f"cos and sin must be (T, hs) = {tuple(x.shape[-2:])} for x of shape {tuple(x.shape)}, got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}; make them with RotaryEmbedding(hs)(positions) "
                         "for the positions of x")
    return x * cos + rotate_half(x) * sin  # (..., T, hs)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given absolute positions: ``rope(positions) -> (cos, sin)``, each (T, head_size).

    The frequencies are a non-persistent buffer: they follow the module to a device but are not saved in a
    checkpoint (they are fixed by ``head_size`` and ``base``).
    """

    def __init__(self, head_size: int, base: float = 10_000.0):
        super().__init__()
        self.head_size, self.base = head_size, base
        self.register_buffer("inv_freq", rope_frequencies(head_size, base), persistent=False)

    def forward(self, positions: torch.Tensor) -> RopeTables:
        if positions.dim() != 1 or positions.dtype.is_floating_point or positions.dtype == torch.bool:
            raise ValueError(f"positions must be a 1-D tensor of integer positions, got dtype {positions.dtype} "
                             f"and shape {tuple(positions.shape)}; pass torch.arange(start, start + T)")
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]  # (T, hs/2): m·θ_i
        angles = torch.cat((angles, angles), dim=-1)  # (T, hs): pair i and pair i + hs/2 share an angle
        return angles.cos(), angles.sin()
