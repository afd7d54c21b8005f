r"""A small GPT: token embeddings, learned or rotary positions, pre-LayerNorm transformer blocks, tied output head.

Each block is the two residual updates of the GPT-2 architecture:

.. math::

    x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1(x)), \qquad x \leftarrow x + \mathrm{MLP}(\mathrm{LN}_2(x))

and the model is trained to minimise the next-token cross-entropy
:math:`\mathcal{L} = -\frac{1}{BT}\sum_{b,t} \log p_\theta(x_{b,t+1} \mid x_{b,\le t})`.

Positions come one of two ways (``GPTConfig.position``):

* ``"learned"`` (GPT-2): a table of ``block_size`` position vectors added to the token embeddings. The model cannot
  read a sequence longer than ``block_size``, and a KV cache must be refilled when the context window slides.
* ``"rope"`` (Llama): rotary embeddings (:mod:`minillm.gpt.rope`) rotate queries and keys by their absolute
  positions, and each attention layer sees the last ``block_size`` positions (sliding-window attention). Inputs of
  any length are allowed — one forward pass over a long sequence is the reference a sliding KV cache is proven
  equal to — and on inputs of at most ``block_size`` tokens the window masks nothing, so training is unchanged.

Configs are dataclasses with named presets (``gpt-tiny`` for a CPU, ``gpt-shakespeare`` — nanoGPT's
shakespeare_char model — for a GPU): ``gpt_config(profile.pick("gpt-tiny", "gpt-shakespeare"), vocab_size)``,
and ``gpt_config(..., position="rope")`` for rotary positions.
:func:`load_gpt` rebuilds a model saved with :func:`minillm.core.checkpoint.save_model`.

Defined in chapter 1; the model quantized in chapter 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.core.checkpoint import load_config, load_weights
from minillm.gpt.attention import Backend, CausalSelfAttention
from minillm.gpt.kv_cache import KVCache
from minillm.gpt.rope import RopeTables, RotaryEmbedding

Position = Literal["learned", "rope"]


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64  # longest context the model is trained on (and attention window with RoPE)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    backend: Backend = "sdpa"
    position: Position = "learned"  # "learned" absolute embeddings (GPT-2) or "rope" rotary embeddings
    rope_base: float = 10_000.0  # RoPE: frequencies base ** (-2i / head_size)

    def __post_init__(self):
        if min(self.vocab_size, self.block_size, self.n_layer, self.n_head, self.n_embd) <= 0:
            raise ValueError(f"all sizes must be positive, got {self}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.backend not in ("manual", "sdpa"):
            raise ValueError(f"backend must be 'manual' or 'sdpa', got {self.backend!r}")
        if self.position not in ("learned", "rope"):
            raise ValueError(f"position must be 'learned' (absolute embeddings) or 'rope' (rotary), got {self.position!r}")
        if self.position == "rope" and self.head_size % 2:
            raise ValueError(f"RoPE rotates pairs of coordinates: head_size = n_embd / n_head = {self.head_size} must "
                             "be even; change n_embd or n_head")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


#: Named presets. ``gpt-tiny`` is nanoGPT's CPU recipe; ``gpt-shakespeare`` its shakespeare_char GPU model.
GPT_PRESETS: dict[str, GPTConfig] = {
    "gpt-tiny": GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
    "gpt-shakespeare": GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
}


def gpt_config(preset: str, vocab_size: int, **overrides) -> GPTConfig:
    """The preset ``preset`` with the tokenizer's vocabulary size (and any field overridden, e.g. ``position="rope"``)."""
    if preset not in GPT_PRESETS:
        raise ValueError(f"unknown GPT preset {preset!r}; choose one of {sorted(GPT_PRESETS)}")
    unknown = sorted(set(overrides) - {f.name for f in fields(GPTConfig)})
    if unknown:
        raise ValueError(f"GPTConfig has no field(s) {unknown}; choose among {[f.name for f in fields(GPTConfig)]}")
    return replace(GPT_PRESETS[preset], vocab_size=vocab_size, **overrides)


def _check_config(cfg, who: str) -> None:
    if not isinstance(cfg, GPTConfig):
        raise TypeError(f"{who} takes a GPTConfig, got {type(cfg).__name__}; build one with gpt_config(preset, vocab_size)")


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        _check_config(cfg, "MLP")
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        _check_config(cfg, "Block")
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        window = cfg.block_size if cfg.position == "rope" else None  # RoPE: sliding-window attention
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.block_size, cfg.dropout, cfg.bias, cfg.backend,
                                        window)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache=None, rope: RopeTables | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer language model (GPT-2 style, nanoGPT naming; Llama's rotary positions optional)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        _check_config(cfg, "GPT")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.position == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            self.rotary = RotaryEmbedding(cfg.head_size, cfg.rope_base)
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
        if non_embedding and self.config.position == "learned":
            n -= self.wpe.weight.numel()
        return n

    def new_cache(self, batch_size: int, device: torch.device | str | None = None) -> KVCache:
        """An empty KV cache for this model: fixed at ``block_size`` positions with learned positions; sliding
        (window ``block_size``, buffers of ``2 * block_size`` so the window moves once every ``block_size + 1``
        steps) with RoPE."""
        cfg = self.config
        device = device or self.wte.weight.device
        sliding = cfg.position == "rope"
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, 2 * cfg.block_size if sliding else cfg.block_size,
                       cfg.head_size, device, self.wte.weight.dtype, window=cfg.block_size if sliding else None)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids -> logits (B, T, V), and the mean cross-entropy if ``targets`` is given.

        With ``cache``, ``idx`` holds only the tokens after the cached ones; positions continue from
        ``cache.position``. With RoPE, ``T`` may exceed ``block_size`` (sliding-window attention).
        """
        self._check_inputs(idx, targets, cache)
        B, T = idx.shape
        start = cache.position if cache is not None else 0
        pos = torch.arange(start, start + T, device=idx.device)  # (T,) absolute positions
        x, rope = self.wte(idx), None  # (B, T, C)
        if self.config.position == "learned":
            if start + T > self.config.block_size:
                raise ValueError(
                    f"context of {start + T} tokens exceeds block_size={self.config.block_size}; "
                    f"crop to the last {self.config.block_size} tokens (generate() does this for you)"
                )
            x = x + self.wpe(pos)
        else:
            rope = self.rotary(pos)  # (cos, sin), each (T, hs): shared by every layer
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None, rope)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def _check_inputs(self, idx: torch.Tensor, targets: torch.Tensor | None, cache: KVCache | None) -> None:
        check_token_batch(idx, targets, self.config.vocab_size, self.wte.weight.device)
        if cache is not None:
            if not isinstance(cache, KVCache) or len(cache.layers) != self.config.n_layer:
                raise ValueError("cache must be a KVCache with one layer per block; make it with model.new_cache(B)")
            if cache.layers[0].k.size(0) != idx.size(0):
                raise ValueError(f"the cache was made for batch size {cache.layers[0].k.size(0)}, idx has "
                                 f"{idx.size(0)} sequences; make a new one with model.new_cache({idx.size(0)})")


def check_token_batch(idx: torch.Tensor, targets: torch.Tensor | None, vocab_size: int, device: torch.device) -> None:
    """Reject what a language model cannot read: ``idx`` must be (B, T) integer ids in [0, vocab_size) on ``device``,
    with T >= 1, and ``targets`` (when given) of the same shape. Each error names the problem and the fix."""
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(getattr(idx, 'shape', ()))}; "
                         "add a batch dimension with idx.unsqueeze(0)")
    if idx.dtype not in (torch.long, torch.int32):
        raise ValueError(f"idx must hold integer token ids (torch.long), got {idx.dtype}; "
                         "encode text with the tokenizer, or call idx.long()")
    if idx.size(1) == 0:
        raise ValueError("idx holds no tokens (T = 0); give at least one token")
    if idx.device != device:
        raise ValueError(f"idx is on {idx.device} but the model is on {device}; move it with idx.to({str(device)!r})")
    lo, hi = torch.stack(torch.aminmax(idx)).tolist()
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}) (the vocabulary), got values in "
                         f"[{lo}, {hi}]; encode with the tokenizer the model was built for")
    if targets is not None and (not isinstance(targets, torch.Tensor) or targets.shape != idx.shape):
        raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got "
                         f"{tuple(getattr(targets, 'shape', ()))}; pass the next token of every position")


def load_gpt(path: str | Path, device: torch.device | str = "cpu") -> GPT:
    """Rebuild a :class:`GPT` saved with :func:`minillm.core.checkpoint.save_model` (weights + ``.json`` config).

    Raises:
        FileNotFoundError: a file is missing. CheckpointError: a file is corrupt or was written for another model.
    """
    model = GPT(load_config(path, GPTConfig))
    return load_weights(model, path, device).to(device)
