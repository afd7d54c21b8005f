r"""The MoE language model: chapter 1's attention, with a :class:`~minillm.moe.layer.SparseMoE` as the MLP.

Each block is :math:`x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1 x)`, then
:math:`x \leftarrow x + \mathrm{MoE}(\mathrm{LN}_2 x)`. In training the objective adds the auxiliary
losses, averaged over the L layers so their weights do not depend on depth:

.. math::

    \mathcal{L} = \mathcal{L}_{CE} + \alpha\,\frac1L\sum_{l}\mathcal{L}^{(l)}_{bal}
                  + \beta\,\frac1L\sum_{l}\mathcal{L}^{(l)}_{z}

In evaluation mode the loss is the cross-entropy alone, comparable with a dense model's.

With ``ffn="dense"`` (:func:`~minillm.moe.config.dense_baseline`) the same blocks hold one MLP instead, which is
how the chapter builds its dense baselines: with GELU, GPT-2 init and width :math:`4C` it computes exactly chapter
1's GPT. Decoding uses chapter 1's KV cache (:meth:`MoELM.new_cache`, ``model(idx, cache=cache)``), so
:func:`minillm.gpt.generate` samples from a MoE as it does from the GPT; routing is per token, so a cached step
routes each new token as a full forward pass over the text would (there is no capacity in evaluation).

Defined in chapter 2.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.gpt.attention import CausalSelfAttention
from minillm.gpt.kv_cache import KVCache, LayerKVCache
from minillm.gpt.model import check_token_batch
from minillm.moe.config import MoEConfig
from minillm.moe.experts import activation_fn
from minillm.moe.init import init_weights
from minillm.moe.layer import SparseMoE


class DenseMLP(nn.Module):
    """The dense baseline's MLP, C -> H -> activation -> C, built like one expert."""

    def __init__(self, n_embd: int, hidden: int, dropout: float = 0.0, activation: str = "gelu"):
        super().__init__()
        for name, value in (("n_embd", n_embd), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.act = activation_fn(activation)
        self.fc1 = nn.Linear(n_embd, hidden)
        self.fc2 = nn.Linear(hidden, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))  # (B, T, C)


class MoEBlock(nn.Module):
    """x + Attn(LN(x)), then x + SparseMoE(LN(x)) (or x + DenseMLP(LN(x)) for ``ffn="dense"``)."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        if not isinstance(cfg, MoEConfig):
            raise TypeError(f"MoEBlock takes a MoEConfig, got {type(cfg).__name__}; build one with "
                            "moe_config(preset, vocab_size)")
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.block_size, cfg.dropout, cfg.qkv_bias,
                                        cfg.backend)
        if cfg.proj_bias != cfg.qkv_bias:  # makeMoE: bias-free q/k/v but a biased output projection
            self.attn.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.proj_bias)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        if cfg.ffn == "dense":
            self.moe = DenseMLP(cfg.n_embd, cfg.hidden, cfg.dropout, cfg.activation)
        else:
            self.moe = SparseMoE(cfg.n_embd, cfg.n_experts, cfg.top_k, cfg.hidden, cfg.dropout, cfg.noisy,
                                 cfg.capacity_factor, cfg.dispatch, cfg.eval_noise, cfg.activation,
                                 cfg.capacity_in_eval)

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # (B, T, C)
        return x + self.moe(self.ln_2(x))  # (B, T, C)


class MoELM(nn.Module):
    """Decoder-only transformer whose MLPs are sparse mixtures of experts."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        if not isinstance(cfg, MoEConfig):
            raise TypeError(f"MoELM takes a MoEConfig, got {type(cfg).__name__}; build one with "
                            "moe_config(preset, vocab_size)")
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(MoEBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.lm_head_bias)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        init_weights(self, cfg.init, cfg.expert_init, cfg.n_layer)
        self.last_losses: dict[str, float] = {}

    @property
    def moe_layers(self) -> list[SparseMoE]:
        return [block.moe for block in self.blocks if isinstance(block.moe, SparseMoE)]

    def num_params(self) -> int:
        """Every parameter, counted once (a tied head is the embedding)."""
        return sum(p.numel() for p in self.parameters())

    def num_active_params(self) -> int:
        """Parameters one token uses: all but the (E - k) experts it is not routed to."""
        cfg = self.config
        if cfg.ffn == "dense":
            return self.num_params()
        expert = self.moe_layers[0].experts.params_per_expert
        return self.num_params() - cfg.n_layer * (cfg.n_experts - cfg.top_k) * expert

    def new_cache(self, batch_size: int, device: torch.device | str | None = None) -> KVCache:
        """An empty KV cache of ``block_size`` positions per layer (chapter 1's fixed cache)."""
        cfg = self.config
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, cfg.head_size,
                       device or self.wte.weight.device, self.wte.weight.dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) -> logits (B, T, V) and, with targets, the loss (+ auxiliary terms in training).

        With ``cache``, ``idx`` holds only the tokens after the cached ones; positions continue from
        ``cache.position``.
        """
        self._check_inputs(idx, targets, cache)
        B, T = idx.shape
        start = cache.position if cache is not None else 0
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        if not self.moe_layers:  # a dense baseline: cross-entropy only
            self.last_losses = {"ce": loss.item()}
            return logits, loss
        balance = torch.stack([m.stats.balance_loss for m in self.moe_layers]).mean()
        z = torch.stack([m.stats.z_loss for m in self.moe_layers]).mean()
        self.last_losses = {"ce": loss.item(), "balance": balance.item(), "z": z.item()}
        if self.training:
            cfg = self.config
            loss = loss + cfg.balance_coef * balance + cfg.z_coef * z
        return logits, loss

    def _check_inputs(self, idx: torch.Tensor, targets: torch.Tensor | None, cache: KVCache | None) -> None:
        cfg = self.config
        check_token_batch(idx, targets, cfg.vocab_size, self.wte.weight.device)
        start = cache.position if isinstance(cache, KVCache) else 0
        if start + idx.size(1) > cfg.block_size:
            raise ValueError(f"sequence length {start + idx.size(1)} exceeds block_size={cfg.block_size}; "
                             f"crop the context to the last {cfg.block_size} tokens (generate() does this for you)")
        if cache is not None:
            if not isinstance(cache, KVCache) or len(cache.layers) != cfg.n_layer or cache.window is not None:
                raise ValueError("cache must be a fixed KVCache with one layer per block; make it with "
                                 "model.new_cache(batch_size)")
            if cache.layers[0].k.size(0) != idx.size(0):
                raise ValueError(f"the cache was made for batch size {cache.layers[0].k.size(0)}, idx has "
                                 f"{idx.size(0)} sequences; make a new one with model.new_cache({idx.size(0)})")
