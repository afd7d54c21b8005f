r"""Causal self-attention, from one head to batched multi-head.

Scaled dot-product attention with a causal mask (Vaswani et al., 2017):

.. math::

    \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d_h}} + M\right) V,
    \qquad M_{ij} = \begin{cases} 0 & j \le i \\ -\infty & j > i \end{cases}

Three implementations of the same function, each a step in chapter 1:

* :class:`AttentionHead` — one head, the equation written out;
* :class:`NaiveMultiHeadAttention` — ``n_head`` heads run one after another in a Python loop;
* :class:`CausalSelfAttention` — all heads in one batched matmul (``(B, nh, T, hs)`` tensors), with a
  manual backend and PyTorch's fused ``scaled_dot_product_attention`` backend, and a KV cache.

Defined in chapter 1; reused by the MoE language model of chapter 2.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.gpt.kv_cache import LayerKVCache

Backend = Literal["manual", "sdpa"]


def causal_mask(t_query: int, t_key: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean mask (T_q, T_k), True where query i may attend to key j.

    The queries are the *last* ``t_query`` positions of the ``t_key`` keys (as in KV-cache decoding),
    so query i sits at absolute position ``t_key - t_query + i`` and sees keys ``j <= that``.
    """
    if t_query > t_key:
        raise ValueError(f"more queries ({t_query}) than keys ({t_key}): queries must be the newest positions")
    return torch.ones(t_query, t_key, dtype=torch.bool, device=device).tril(diagonal=t_key - t_query)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              dropout: nn.Module | None = None) -> torch.Tensor:
    """softmax(q kᵀ / √d + M) v, written out. q: (..., T_q, d), k and v: (..., T_k, d) -> (..., T_q, d)."""
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
    """

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0,
                 bias: bool = True, backend: Backend = "sdpa"):
        super().__init__()
        _check_heads(n_embd, n_head)
        if backend not in ("manual", "sdpa"):
            raise ValueError(f"backend must be 'manual' or 'sdpa', got {backend!r}")
        self.n_head, self.n_embd, self.block_size = n_head, n_embd, block_size
        self.backend = backend
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C). With ``cache``, x holds only the new positions; keys and values
        of earlier positions come from the cache and the new ones are appended to it."""
        if x.dim() != 3 or x.size(-1) != self.n_embd:
            raise ValueError(f"expected input of shape (B, T, {self.n_embd}), got {tuple(x.shape)}")
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nh, T_past + T, hs)
        _check_length(k.size(2), self.block_size)
        y = self._attend(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t_q, t_k = q.size(2), k.size(2)
        if self.backend == "manual":
            return attention(q, k, v, causal_mask(t_q, t_k, q.device), self.attn_dropout)
        p = self.dropout if self.training else 0.0
        if t_q == t_k:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        # SDPA's is_causal aligns the mask top-left, which is wrong when the queries are the newest
        # positions (decoding with a cache): pass the bottom-right-aligned mask explicitly instead.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t_q, t_k, q.device), dropout_p=p)

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
