r"""Key/value cache for autoregressive decoding.

At step t a causal model needs :math:`K_{1..t}` and :math:`V_{1..t}`, but only position t is new:

.. math::

    K_{1..t} = [K_{1..t-1};\ x_t W_K], \qquad V_{1..t} = [V_{1..t-1};\ x_t W_V]

so the cache keeps the old rows and each decoding step computes one row per layer instead of t.
Buffers are preallocated to ``max_len`` so appending never reallocates.

Defined in chapter 1.
"""

from __future__ import annotations

import torch


class LayerKVCache:
    """Keys and values of one attention layer: buffers (B, nh, max_len, hs), filled up to ``length``."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (batch_size, n_head, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.size(2)

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nh, T_new, hs) keys/values; return all cached ones, (B, nh, length, hs)."""
        t_new = k_new.size(2)
        if self.length + t_new > self.max_len:
            raise ValueError(
                f"KV cache holds {self.length} of {self.max_len} positions and cannot take {t_new} more; "
                "call reset() and prefill with the cropped context"
            )
        if k_new.shape[:2] != self.k.shape[:2] or k_new.size(3) != self.k.size(3):
            raise ValueError(f"cache expects (B, nh, T, hs) = {tuple(self.k.shape[:2])} + (T, {self.k.size(3)}), got {tuple(k_new.shape)}")
        end = self.length + t_new
        self.k[:, :, self.length:end] = k_new
        self.v[:, :, self.length:end] = v_new
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """One :class:`LayerKVCache` per transformer block; ``length`` is the number of cached positions."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.layers = [LayerKVCache(batch_size, n_head, max_len, head_size, device, dtype) for _ in range(n_layer)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def max_len(self) -> int:
        return self.layers[0].max_len

    def reset(self) -> None:
        for layer in self.layers:
            layer.length = 0

    def nbytes(self) -> int:
        """Memory held by the buffers: 2 · n_layer · B · nh · max_len · hs · bytes per element."""
        return sum(layer.k.nbytes + layer.v.nbytes for layer in self.layers)
