r"""A small GPT: token + position embeddings, pre-LayerNorm transformer blocks, tied output head.

Each block is the two residual updates of the GPT-2 architecture:

.. math::

    x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1(x)), \qquad x \leftarrow x + \mathrm{MLP}(\mathrm{LN}_2(x))

and the model is trained to minimise the next-token cross-entropy
:math:`\mathcal{L} = -\frac{1}{BT}\sum_{b,t} \log p_\theta(x_{b,t+1} \mid x_{b,\le t})`.

Configs are dataclasses with named presets (``gpt-tiny`` for a CPU, ``gpt-shakespeare`` — nanoGPT's
shakespeare_char model — for a GPU): ``gpt_config(profile.pick("gpt-tiny", "gpt-shakespeare"), vocab_size)``.
:func:`load_gpt` rebuilds a model saved with :func:`minillm.core.checkpoint.save_model`.

Defined in chapter 1; the model quantized in chapter 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.core.checkpoint import load_config, load_weights
from minillm.gpt.attention import Backend, CausalSelfAttention
from minillm.gpt.kv_cache import KVCache


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64  # longest context the model can attend over
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    backend: Backend = "sdpa"

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if min(self.vocab_size, self.block_size, self.n_layer, self.n_head) <= 0:
            raise ValueError(f"all sizes must be positive, got {self}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


#: Named presets. ``gpt-tiny`` is nanoGPT's CPU recipe; ``gpt-shakespeare`` its shakespeare_char GPU model.
GPT_PRESETS: dict[str, GPTConfig] = {
    "gpt-tiny": GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    "gpt-shakespeare": GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
}


def gpt_config(preset: str, vocab_size: int, **overrides) -> GPTConfig:
    """The preset ``preset`` with the tokenizer's vocabulary size (and any field overridden)."""
    if preset not in GPT_PRESETS:
        raise ValueError(f"unknown GPT preset {preset!r}; choose one of {sorted(GPT_PRESETS)}")
    return replace(GPT_PRESETS[preset], vocab_size=vocab_size, **overrides)


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.block_size, cfg.dropout, cfg.bias, cfg.backend)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer language model (GPT-2 style, nanoGPT naming)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix embeds and un-embeds tokens
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: residual projections scaled by 1/sqrt(2·n_layer)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embeddings (token ones are tied to the head)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def new_cache(self, batch_size: int, device: torch.device | str | None = None) -> KVCache:
        """An empty KV cache sized for this model's context window."""
        cfg = self.config
        device = device or self.wte.weight.device
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, cfg.head_size, device, self.wte.weight.dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids -> logits (B, T, V), and the mean cross-entropy if ``targets`` is given.

        With ``cache``, ``idx`` holds only the tokens after the cached ones; positions continue from
        ``cache.length``.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(
                f"context of {start + T} tokens exceeds block_size={self.config.block_size}; "
                f"crop to the last {self.config.block_size} tokens (generate() does this for you)"
            )
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def load_gpt(path: str | Path, device: torch.device | str = "cpu") -> GPT:
    """Rebuild a :class:`GPT` saved with :func:`minillm.core.checkpoint.save_model` (weights + ``.json`` config).

    Raises:
        FileNotFoundError: a file is missing. CheckpointError: a file is corrupt or was written for another model.
    """
    model = GPT(load_config(path, GPTConfig))
    return load_weights(model, path, device).to(device)
