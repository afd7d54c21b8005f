r"""Key/value cache for autoregressive decoding, fixed or sliding.

At step t a causal model needs :math:`K_{1..t}` and :math:`V_{1..t}`, but only position t is new:

.. math::

    K_{1..t} = [K_{1..t-1};\ x_t W_K], \qquad V_{1..t} = [V_{1..t-1};\ x_t W_V]

so the cache keeps the old rows and each decoding step computes one row per layer instead of t.

Two kinds, chosen by ``window``:

* ``window=None`` (**fixed**): buffers of ``max_len`` positions; appending past them is an error. A model with learned
  absolute position embeddings uses this one: once its context window is full, every position's embedding shifts
  when the window slides, so the cache must be emptied and refilled (:func:`minillm.gpt.generation.generate`).
* ``window=W`` (**sliding**): each query attends to the last ``W`` positions only (sliding-window attention), so the
  cache keeps at most the last ``W - 1`` old keys and values before it appends new ones. With rotary position
  embeddings each key was rotated at its own absolute position once and for all, so old keys stay valid and decoding
  past the window costs one new position per step. The buffers hold ``max_len >= W`` positions; when an append would
  run off their end, the rows still in the window are moved to the front (one copy every ``max_len - W + 1`` steps
  when decoding token by token, so appending is O(1) amortised and the returned keys are one contiguous view).

Defined in chapter 1.
"""

from __future__ import annotations

import torch


class LayerKVCache:
    """Keys and values of one attention layer: buffers (B, nh, max_len, hs), rows ``[0, length)`` filled.

    ``position`` counts every position ever appended (the absolute position of the next token); for a fixed
    cache it equals ``length``, for a sliding cache it keeps growing while ``length`` stays bounded.
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, window: int | None = None):
        for name, value in (("batch_size", batch_size), ("n_head", n_head), ("max_len", max_len),
                            ("head_size", head_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}; size the cache from the "
                                 "model config (GPT.new_cache does this)")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"a KV cache stores activations, so dtype must be a floating-point torch.dtype, got "
                             f"{dtype!r}; use the model's dtype (e.g. torch.float32)")
        if window is not None and (not isinstance(window, int) or not 0 < window <= max_len):
            raise ValueError(f"window must be a positive integer <= max_len={max_len}, got {window!r}; "
                             "a sliding cache needs room for the whole window")
        shape = (batch_size, n_head, max_len, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.window = window
        self.length = 0
        self.position = 0

    @property
    def max_len(self) -> int:
        return self.k.size(2)

    @property
    def sliding(self) -> bool:
        return self.window is not None

    def reset(self) -> None:
        self.length = 0
        self.position = 0

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nh, T_new, hs) keys/values; return the ones the new queries may read, (B, nh, T_k, hs).

        Fixed cache: every cached position (``T_k = length``). Sliding cache: the last ``W - 1`` old positions and
        the new ones (``T_k <= W - 1 + T_new``), in position order; the caller masks each query to its last ``W``.
        """
        if k_new.shape != v_new.shape or k_new.dim() != 4:
            raise ValueError(f"keys and values must both be (B, nh, T, hs), got {tuple(k_new.shape)} and "
                             f"{tuple(v_new.shape)}")
        if k_new.shape[:2] != self.k.shape[:2] or k_new.size(3) != self.k.size(3):
            raise ValueError(f"cache expects (B, nh, T, hs) = {tuple(self.k.shape[:2])} + (T, {self.k.size(3)}), got "
                             f"{tuple(k_new.shape)}; make the cache with the model's new_cache(batch_size)")
        t_new = k_new.size(2)
        keep = self.length if self.window is None else min(self.length, self.window - 1)  # old rows still visible
        if keep + t_new > self.max_len:
            if self.window is None:
                raise ValueError(f"KV cache holds {self.length} of {self.max_len} positions and cannot take {t_new} "
                                 "more; call reset() and prefill with the cropped context")
            raise ValueError(f"a sliding cache of {self.max_len} positions (window {self.window}) cannot take "
                             f"{t_new} new positions at once; feed at most {self.max_len - self.window + 1} "
                             "at a time")
        if self.length + t_new > self.max_len:  # sliding: move the visible rows to the front of the buffers
            self.k[:, :, :keep] = self.k[:, :, self.length - keep:self.length].clone()
            self.v[:, :, :keep] = self.v[:, :, self.length - keep:self.length].clone()
            self.length = keep
        end = self.length + t_new
        self.k[:, :, self.length:end] = k_new
        self.v[:, :, self.length:end] = v_new
        self.length = end
        self.position += t_new
        start = end - keep - t_new  # 0 for a fixed cache
        return self.k[:, :, start:end], self.v[:, :, start:end]


class KVCache:
    """One :class:`LayerKVCache` per transformer block.

    ``length`` is the number of positions the layers hold, ``position`` the number of positions seen so far
    (the absolute position of the next token).
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, window: int | None = None):
        if not isinstance(n_layer, int) or isinstance(n_layer, bool) or n_layer <= 0:
            raise ValueError(f"n_layer must be a positive integer, got {n_layer!r}; use the model's config.n_layer")
        self.layers = [LayerKVCache(batch_size, n_head, max_len, head_size, device, dtype, window)
                       for _ in range(n_layer)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def position(self) -> int:
        return self.layers[0].position

    @property
    def max_len(self) -> int:
        return self.layers[0].max_len

    @property
    def window(self) -> int | None:
        return self.layers[0].window

    @property
    def sliding(self) -> bool:
        return self.layers[0].sliding

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def nbytes(self) -> int:
        """Memory held by the buffers: 2 · n_layer · B · nh · max_len · hs · bytes per element."""
        return sum(layer.k.nbytes + layer.v.nbytes for layer in self.layers)
