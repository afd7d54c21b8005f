r"""Causal self-attention, from one head to batched multi-head, with an optional sliding window.

Scaled dot-product attention with a causal mask (Vaswani et al., 2017):

.. math::

    \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d_h}} + M\right) V,
    \qquad M_{ij} = \begin{cases} 0 & i - W < j \le i \\ -\infty & \text{otherwise} \end{cases}

where the window :math:`W` is unbounded for plain causal attention and ``block_size`` for the sliding-window
attention of a model with rotary position embeddings (every query sees its last :math:`W` positions).

Three implementations of the same function, each a step in chapter 1:

* :class:`AttentionHead` — one head, the equation written out;
* :class:`NaiveMultiHeadAttention` — ``n_head`` heads run one after another in a Python loop;
* :class:`CausalSelfAttention` — all heads in one batched matmul (``(B, nh, T, hs)`` tensors), with a
  manual backend and PyTorch's fused ``scaled_dot_product_attention`` backend, a KV cache, and optional
  rotary position embeddings (:mod:`minillm.gpt.rope`) and window.

Defined in chapter 1; reused by the MoE language model of chapter 2.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.gpt.kv_cache import LayerKVCache
from minillm.gpt.rope import RopeTables, apply_rope

Backend = Literal["manual", "sdpa"]


def causal_mask(t_query: int, t_key: int, device: torch.device | str | None = None,
                window: int | None = None) -> torch.Tensor:
    """Boolean mask (T_q, T_k), True where query i may attend to key j.

    The queries are the *last* ``t_query`` positions of the ``t_key`` keys (as in KV-cache decoding),
    so query i sits at position ``p = t_key - t_query + i`` and sees keys ``j <= p`` — and, with a
    ``window`` W, only ``j > p - W`` (its last W positions, itself included).
    """
    if t_query > t_key:
        raise ValueError(f"more queries ({t_query}) than keys ({t_key}): queries must be the newest positions")
    mask = torch.ones(t_query, t_key, dtype=torch.bool, device=device).tril(diagonal=t_key - t_query)
    if window is not None:
        if window <= 0:
            raise ValueError(f"window must be a positive number of positions, got {window}")
        mask = mask.triu(diagonal=t_key - t_query - window + 1)
    return mask


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout: nn.Module | None = None) -> torch.Tensor:
    """softmax(q kᵀ / √d + M) v, written out. q: (..., T_q, d), k and v: (..., T_k, d) -> (..., T_q, d)."""
    if q.dim() < 2 or q.size(-1) != k.size(-1) or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"attention needs q (..., T_q, d), k (..., T_k, d) and v (..., T_k, d_v) with one d and one "
                         f"T_k, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; split heads the same way")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape[-2:]) != (q.size(-2), k.size(-2))):
        raise ValueError(f"mask must be a bool tensor (T_q, T_k) = {(q.size(-2), k.size(-2))} with True where "
                         f"attention is allowed, got {mask.dtype} {tuple(mask.shape)}; build it with causal_mask()")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=-1)
    if dropout is not None:
        weights = dropout(weights)
    return weights @ v  # (..., T_q, d)


class AttentionHead(nn.Module):
    """One head of causal self-attention: project x to q, k, v of size ``head_size`` and attend."""

    def __init__(self, n_embd: int, head_size: int, block_size: int):
        super().__init__()
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.size(-1) != self.query.in_features:
            raise ValueError(f"expected input of shape (B, T, {self.query.in_features}), got {tuple(x.shape)}")
        _, T, _ = x.shape  # (B, T, C)
        _check_length(T, self.block_size)
        q, k, v = self.query(x), self.key(x), self.value(x)  # each (B, T, hs)
        return attention(q, k, v, causal_mask(T, T, x.device))  # (B, T, hs)


class NaiveMultiHeadAttention(nn.Module):
    """``n_head`` independent heads in a Python loop, concatenated, then an output projection."""

    def __init__(self, n_embd: int, n_head: int, block_size: int):
        super().__init__()
        _check_heads(n_embd, n_head)
        self.heads = nn.ModuleList(AttentionHead(n_embd, n_embd // n_head, block_size) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([head(x) for head in self.heads], dim=-1))  # (B, T, C)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with every head in one batched matmul.

    One linear layer makes q, k and v for all heads at once (``c_attn``: C -> 3C); a reshape to
    (B, nh, T, hs) turns the heads into a batch dimension, so one ``attention`` call serves them all.

    Args:
        backend: ``"manual"`` runs :func:`attention`; ``"sdpa"`` runs
            ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels where available).
        window: ``None`` for causal attention over at most ``block_size`` positions (longer inputs are an
            error); an integer W for sliding-window attention over inputs of any length, each query seeing
            its last W positions (the model with rotary position embeddings uses ``window=block_size``).
    """

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0,
                 bias: bool = True, backend: Backend = "sdpa", window: int | None = None):
        super().__init__()
        _check_heads(n_embd, n_head)
        if backend not in ("manual", "sdpa"):
            raise ValueError(f"backend must be 'manual' or 'sdpa', got {backend!r}")
        if window is not None and (not isinstance(window, int) or window <= 0):
            raise ValueError(f"window must be None or a positive number of positions, got {window!r}")
        self.n_head, self.n_embd, self.block_size = n_head, n_embd, block_size
        self.backend = backend
        self.window = window
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None, rope: RopeTables | None = None) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C). With ``cache``, x holds only the new positions; keys and values
        of earlier positions come from the cache and the new ones are appended to it. ``rope`` holds the
        (cos, sin) tables of the new positions: queries and keys are rotated before keys are cached."""
        if x.dim() != 3 or x.size(-1) != self.n_embd:
            raise ValueError(f"expected input of shape (B, T, {self.n_embd}), got {tuple(x.shape)}")
        if cache is not None and cache.window != self.window:
            raise ValueError(f"the cache's window ({cache.window}) differs from the layer's ({self.window}); "
                             "make the cache with the model's new_cache()")
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # q, k, v for every head at once
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, nh, T, hs)
        if rope is not None:
            q, k = apply_rope(qkv[:2], *rope)  # queries and keys, each position rotated by its own angle
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, T_k, hs), T_k = cached + T
        if self.window is None:
            _check_length(k.size(2), self.block_size)
        y = self._attend(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t_q, t_k = q.size(2), k.size(2)
        in_window = self.window is None or t_k <= self.window  # then the window masks nothing
        if self.backend == "manual":
            mask = None if (t_q == 1 and in_window) else causal_mask(t_q, t_k, q.device, self.window)
            return attention(q, k, v, mask, self.attn_dropout)
        p = self.dropout if self.training else 0.0
        if t_q == t_k and in_window:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        if t_q == 1 and in_window:  # one new query may read every key it is given
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        # SDPA's is_causal aligns the mask top-left, which is wrong when the queries are the newest
        # positions (decoding with a cache), and knows no window: pass the mask explicitly instead.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t_q, t_k, q.device, self.window),
                                              dropout_p=p)

    @classmethod
    def from_naive(cls, naive: NaiveMultiHeadAttention, backend: Backend = "sdpa") -> "CausalSelfAttention":
        """The batched module computing exactly what ``naive`` computes (its weights, stacked)."""
        n_head = len(naive.heads)
        n_embd = naive.proj.in_features
        batched = cls(n_embd, n_head, naive.heads[0].block_size, bias=False, backend=backend)
        with torch.no_grad():
            for i, name in enumerate(("query", "key", "value")):
                stacked = torch.cat([getattr(h, name).weight for h in naive.heads], dim=0)  # (C, C)
                batched.c_attn.weight[i * n_embd:(i + 1) * n_embd] = stacked
            batched.c_proj.weight.copy_(naive.proj.weight)
        return batched.to(naive.proj.weight.device)


def _check_heads(n_embd: int, n_head: int) -> None:
    if n_head <= 0 or n_embd % n_head != 0:
        raise ValueError(f"n_embd={n_embd} must be a positive multiple of n_head={n_head} (head_size = n_embd / n_head)")


def _check_length(t: int, block_size: int) -> None:
    if t > block_size:
        raise ValueError(f"sequence length {t} exceeds block_size={block_size}; crop the context to the last {block_size} tokens")
