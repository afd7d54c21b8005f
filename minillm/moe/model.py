r"""The MoE language model: chapter 1's attention, with a :class:`~minillm.moe.layer.SparseMoE` as the MLP.

Each block is :math:`x \leftarrow x + \mathrm{Attn}(\mathrm{LN}_1 x)`, then
:math:`x \leftarrow x + \mathrm{MoE}(\mathrm{LN}_2 x)`. In training the objective adds the auxiliary
losses, averaged over the L layers so their weights do not depend on depth:

.. math::

    \mathcal{L} = \mathcal{L}_{CE} + \alpha\,\frac1L\sum_{l}\mathcal{L}^{(l)}_{bal}
                  + \beta\,\frac1L\sum_{l}\mathcal{L}^{(l)}_{z}

In evaluation mode the loss is the cross-entropy alone, comparable with the dense GPT's.

Presets: ``moe-tiny`` (CPU) and ``moe-small`` (GPU, makeMoE's sizes) are laid out like chapter 1's GPT —
tied head, biases — with experts of width 2C, so top-2 routing activates as many parameters as the dense
4C MLP; ``makemoe`` is makeMoE's exact architecture (untied head with bias, bias-free q/k/v, experts of
width 4C).

Defined in chapter 2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from minillm.gpt.attention import Backend, CausalSelfAttention
from minillm.moe.dispatch import DispatchName
from minillm.moe.experts import ExpertBank
from minillm.moe.layer import SparseMoE

InitName = Literal["kaiming", "glorot"]


@dataclass(frozen=True)
class MoEConfig:
    vocab_size: int = 65
    block_size: int = 32
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_experts: int = 8
    top_k: int = 2
    expert_mult: int = 2  # expert hidden width = expert_mult · n_embd
    dropout: float = 0.0
    noisy: bool = True  # NoisyTopkRouter, else TopkRouter
    eval_noise: bool = False  # True reproduces makeMoE's noise at evaluation
    capacity_factor: float | None = None  # None: no expert capacity, no dropping
    dispatch: DispatchName = "batched"
    balance_coef: float = 0.01  # α, Switch Transformer's value
    z_coef: float = 0.0  # β, ST-MoE uses 1e-3
    init: InitName = "kaiming"
    qkv_bias: bool = True
    proj_bias: bool = True
    tie_weights: bool = True
    lm_head_bias: bool = False
    backend: Backend = "sdpa"

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be in [1, n_experts={self.n_experts}]")
        if self.init not in ("kaiming", "glorot"):
            raise ValueError(f"init must be 'kaiming' or 'glorot', got {self.init!r}")


#: ``moe-tiny`` for a CPU; ``moe-small`` makeMoE's sizes laid out like the dense GPT (for the equal-active-
#: parameter comparison on a GPU); ``makemoe`` is makeMoE's configuration, to the parameter.
MOE_PRESETS: dict[str, MoEConfig] = {
    "moe-tiny": MoEConfig(),
    "moe-small": MoEConfig(block_size=32, n_layer=8, n_head=8, n_embd=128, n_experts=8, top_k=2, expert_mult=2,
                           dropout=0.1),
    "makemoe": MoEConfig(block_size=32, n_layer=8, n_head=8, n_embd=128, n_experts=8, top_k=2, expert_mult=4,
                         dropout=0.1, qkv_bias=False, proj_bias=True, tie_weights=False, lm_head_bias=True),
}


def moe_config(preset: str, vocab_size: int, **overrides) -> MoEConfig:
    """The preset ``preset`` with the tokenizer's vocabulary size (and any field overridden)."""
    if preset not in MOE_PRESETS:
        raise ValueError(f"unknown MoE preset {preset!r}; choose one of {sorted(MOE_PRESETS)}")
    return replace(MOE_PRESETS[preset], vocab_size=vocab_size, **overrides)


class MoEBlock(nn.Module):
    """x + Attn(LN(x)), then x + SparseMoE(LN(x))."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.block_size, cfg.dropout, cfg.qkv_bias,
                                        cfg.backend)
        if cfg.proj_bias != cfg.qkv_bias:  # makeMoE: bias-free q/k/v but a biased output projection
            self.attn.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.proj_bias)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.moe = SparseMoE(cfg.n_embd, cfg.n_experts, cfg.top_k, cfg.expert_mult * cfg.n_embd, cfg.dropout,
                             cfg.noisy, cfg.capacity_factor, cfg.dispatch, cfg.eval_noise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # (B, T, C)
        return x + self.moe(self.ln_2(x))  # (B, T, C)


class MoELM(nn.Module):
    """Decoder-only transformer whose MLPs are sparse mixtures of experts."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(MoEBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.lm_head_bias)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        init_weights(self, cfg.init)
        self.last_losses: dict[str, float] = {}

    @property
    def moe_layers(self) -> list[SparseMoE]:
        return [block.moe for block in self.blocks]

    def num_params(self) -> int:
        """Every parameter, counted once (a tied head is the embedding)."""
        return sum(p.numel() for p in self.parameters())

    def num_active_params(self) -> int:
        """Parameters one token uses: all but the (E - k) experts it is not routed to."""
        cfg = self.config
        expert = self.blocks[0].moe.experts.params_per_expert
        return self.num_params() - cfg.n_layer * (cfg.n_experts - cfg.top_k) * expert

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) -> logits (B, T, V) and, with targets, the loss (+ auxiliary terms in training)."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.config.block_size}; "
                             f"crop the context to the last {self.config.block_size} tokens")
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        balance = torch.stack([m.stats.balance_loss for m in self.moe_layers]).mean()
        z = torch.stack([m.stats.z_loss for m in self.moe_layers]).mean()
        self.last_losses = {"ce": loss.item(), "balance": balance.item(), "z": z.item()}
        if self.training:
            cfg = self.config
            loss = loss + cfg.balance_coef * balance + cfg.z_coef * z
        return logits, loss


def init_weights(model: nn.Module, scheme: InitName) -> None:
    """Kaiming (He) or Glorot (Xavier) normal init for every Linear and expert; zero biases; embeddings N(0, 0.02).

    Kaiming keeps the variance of ReLU activations constant through a layer: std = sqrt(2 / fan_in).
    Glorot balances forward and backward variance for linear/tanh units: std = sqrt(2 / (fan_in + fan_out)).
    A head tied to the embedding keeps the embedding's init. An :class:`ExpertBank`'s stacked weights are
    initialised expert by expert, with each expert's own fan-in and fan-out (as separate Linears would be).
    """
    if scheme not in ("kaiming", "glorot"):
        raise ValueError(f"init must be 'kaiming' or 'glorot', got {scheme!r}")

    def init_matrix(w: torch.Tensor) -> None:  # w: (out, in), nn.Linear's layout
        if scheme == "kaiming":
            nn.init.kaiming_normal_(w, nonlinearity="relu")
        else:
            nn.init.xavier_normal_(w)

    tied = getattr(getattr(model, "lm_head", None), "weight", None) is getattr(getattr(model, "wte", None), "weight", 0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                if not (tied and name == "lm_head"):
                    init_matrix(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, ExpertBank):
                for e in range(len(module)):
                    init_matrix(module.w1[e])  # (H, C) views: each expert is initialised like its own Linear
                    init_matrix(module.w2[e])  # (C, H)
                nn.init.zeros_(module.b1)
                nn.init.zeros_(module.b2)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
