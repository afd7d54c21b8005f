r"""Configurations of the MoE language model, its dense baselines, and the chapter's training schedules.

A :class:`MoEConfig` describes the whole model. Named presets (:data:`MOE_PRESETS`), chosen with
``profile.pick("moe-tiny", "makemoe")``:

* ``moe-tiny`` — the CPU model: 2 layers, :math:`C = 128`, 4 heads, context 64, 8 experts of width :math:`2C`,
  top-2, GELU experts and GPT-2 initialisation (chapter 1's rules), a tied head. Top-2 of width-:math:`2C` experts
  give each token as many hidden units as chapter 1's dense :math:`4C` MLP.
* ``makemoe`` — makeMoE's configuration to the parameter (8,996,545 with its 65-character vocabulary): 8 layers,
  8 heads, :math:`C = 128`, context 32, 8 experts of width :math:`4C`, top-2, ReLU, Kaiming init on every linear
  layer, dropout 0.1, bias-free query/key/value projections, an untied head with a bias.

:func:`dense_baseline` turns a MoE config into the dense model it is compared with: the same blocks with one MLP of
width :math:`k \cdot m \cdot C` (**equal active** parameters: what one token uses) or :math:`E \cdot m \cdot C`
(**equal total** parameters: what is stored), same activation, same initialisation.

Defined in chapter 2.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from minillm.gpt.attention import Backend
from minillm.gpt.train import LMTrainConfig
from minillm.moe.dispatch import DISPATCH_NAMES, DispatchName
from minillm.moe.experts import ACTIVATIONS, ActivationName

InitName = Literal["kaiming", "glorot", "gpt2"]
INIT_NAMES: tuple[str, ...] = ("kaiming", "glorot", "gpt2")
FFNName = Literal["moe", "dense"]


@dataclass(frozen=True)
class MoEConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    n_experts: int = 8
    top_k: int = 2
    expert_mult: int = 2  # expert hidden width = expert_mult · n_embd (the dense MLP's width with ffn="dense")
    dropout: float = 0.0
    noisy: bool = True  # NoisyTopkRouter (makeMoE's), else TopkRouter
    eval_noise: bool = False  # True reproduces makeMoE's router noise at evaluation
    capacity_factor: float | None = None  # None: no expert capacity, no dropping
    capacity_in_eval: bool = False  # True: drop beyond capacity in evaluation too (outputs then depend on batch-mates)
    dispatch: DispatchName = "batched"
    balance_coef: float = 0.01  # α, Switch Transformer's value
    z_coef: float = 0.0  # β, ST-MoE uses 1e-3
    activation: ActivationName = "gelu"  # the experts' (or dense MLP's) nonlinearity
    init: InitName = "gpt2"  # every Linear and expert (attention included) unless expert_init is set
    expert_init: InitName | None = None  # None: same as init; else the MLP part (experts, router) gets this one
    ffn: FFNName = "moe"  # "dense": one MLP of width expert_mult · n_embd in place of the SparseMoE
    qkv_bias: bool = True
    proj_bias: bool = True
    tie_weights: bool = True
    lm_head_bias: bool = False
    backend: Backend = "sdpa"

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_experts", "top_k", "expert_mult"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MoEConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}; "
                             "pick n_head among the divisors of n_embd")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be in [1, n_experts={self.n_experts}]; a token picks k "
                             "distinct experts")
        for name, value, allowed in (("init", self.init, INIT_NAMES), ("activation", self.activation, tuple(ACTIVATIONS)),
                                     ("ffn", self.ffn, ("moe", "dense")), ("dispatch", self.dispatch, DISPATCH_NAMES),
                                     ("backend", self.backend, ("manual", "sdpa"))):
            if value not in allowed:
                raise ValueError(f"MoEConfig.{name} must be one of {allowed}, got {value!r}")
        if self.expert_init is not None and self.expert_init not in INIT_NAMES:
            raise ValueError(f"MoEConfig.expert_init must be None (same as init) or one of {INIT_NAMES}, "
                             f"got {self.expert_init!r}")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ValueError(f"capacity_factor must be > 0 or None (no limit), got {self.capacity_factor}; "
                             "Switch Transformer uses 1.25")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not (self.balance_coef >= 0 and self.z_coef >= 0):
            raise ValueError(f"balance_coef and z_coef must be >= 0 (0 switches a loss off), got "
                             f"{self.balance_coef} and {self.z_coef}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        """Width of one expert (or of the dense MLP)."""
        return self.expert_mult * self.n_embd


#: ``moe-tiny`` for a CPU; ``makemoe`` is makeMoE's configuration, to the parameter (the full profile).
MOE_PRESETS: dict[str, MoEConfig] = {
    "moe-tiny": MoEConfig(),
    "makemoe": MoEConfig(block_size=32, n_layer=8, n_head=8, n_embd=128, n_experts=8, top_k=2, expert_mult=4,
                         dropout=0.1, activation="relu", init="kaiming", qkv_bias=False, proj_bias=True,
                         tie_weights=False, lm_head_bias=True),
}


def moe_config(preset: str, vocab_size: int, **overrides) -> MoEConfig:
    """The preset ``preset`` with the tokenizer's vocabulary size (and any field overridden)."""
    if preset not in MOE_PRESETS:
        raise ValueError(f"unknown MoE preset {preset!r}; choose one of {sorted(MOE_PRESETS)}")
    unknown = sorted(set(overrides) - {f.name for f in fields(MoEConfig)})
    if unknown:
        raise ValueError(f"MoEConfig has no field(s) {unknown}; choose among {[f.name for f in fields(MoEConfig)]}")
    return replace(MOE_PRESETS[preset], vocab_size=vocab_size, **overrides)


def dense_baseline(cfg: MoEConfig, match: Literal["active", "total"]) -> MoEConfig:
    """The dense model ``cfg`` is compared with: one MLP of width k·m·C (``"active"``) or E·m·C (``"total"``)."""
    if not isinstance(cfg, MoEConfig) or cfg.ffn != "moe":
        raise ValueError(f"dense_baseline needs a MoE config (ffn='moe'), got {cfg!r:.60}; build one with moe_config()")
    if match not in ("active", "total"):
        raise ValueError(f"match must be 'active' (what one token uses) or 'total' (what is stored), got {match!r}")
    experts = cfg.top_k if match == "active" else cfg.n_experts
    return replace(cfg, ffn="dense", expert_mult=experts * cfg.expert_mult, capacity_factor=None)


#: The tiny profile's schedule: chapter 1's (AdamW, warm-up then cosine, clip 1.0) over 800 steps of 32 windows.
MOE_TRAIN_TINY = LMTrainConfig(max_iters=800, batch_size=32, learning_rate=2e-3, min_lr=2e-4, warmup_iters=80,
                               weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, eval_interval=100, eval_iters=4)
#: makeMoE's schedule: 5,000 steps of 16 windows of 32 characters, AdamW at a constant 1e-3, no clipping.
MOE_TRAIN_FULL = LMTrainConfig(max_iters=5000, batch_size=16, learning_rate=1e-3, min_lr=1e-3, warmup_iters=0,
                               weight_decay=0.01, beta1=0.9, beta2=0.999, grad_clip=0.0, eval_interval=500,
                               eval_iters=100)
