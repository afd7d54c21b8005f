"""Two small image classifiers whose blocks UPDP can prune: a residual CNN (ConvNeXt or bottleneck blocks) and a ViT.

A *subnet* is a boolean mask over the blocks (True = pruned). :class:`PrunableModel` switches the supernet
to a subnet, sets the progressive λ of the pruned blocks and, at λ = 1, returns the merged (shallower) model:

    depth(merged) = depth(baseline) − Σ_pruned (layers per block − layers per merged block)

Defined in chapter 6 (UPDP depth pruning).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from minillm.core.evaluation import eval_mode
from minillm.prune.blocks import ACTIVATIONS, PrunableBlock, PrunableConvBlock, PrunableConvNeXtBlock, PrunableViTBlock, make_act

Mask = tuple[bool, ...]  # one entry per block, True = pruned


def _same_dtype(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dtype != weight.dtype or x.device != weight.device:
        raise ValueError(f"images are {x.dtype} on {x.device} but the model is {weight.dtype} on {weight.device}; "
                         "move them with x.to(weight) (e.g. x.float().to(device)).")


class PrunableModel(nn.Module):
    """A stem, a list of :class:`PrunableBlock`, and a head."""

    blocks: nn.ModuleList

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def subnet(self) -> tuple[bool, ...]:
        return tuple(bool(b.pruned) for b in self.blocks)

    def set_subnet(self, mask: Sequence[bool]) -> None:
        """Prune the blocks where ``mask`` is True (the others run their full form)."""
        if len(mask) != self.num_blocks:
            raise ValueError(f"subnet mask has {len(mask)} entries but the model has {self.num_blocks} blocks; "
                             "give one True (pruned) / False (full) per block.")
        for block, pruned in zip(self.blocks, mask):
            block.pruned = bool(pruned)

    def set_lambda(self, lam: float) -> None:
        """λ of every pruned block's activation: 0 = original activation, 1 = identity (mergeable)."""
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"λ must lie in [0, 1], got {lam}; 0 keeps the activation, 1 makes the block mergeable.")
        for block in self.blocks:
            block.lam = float(lam)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """A copy in which every pruned block is replaced by its merged layer (eval mode, λ = 1)."""
        if self.training:
            raise ValueError("call model.eval() before merged(): BatchNorm fuses its running statistics.")
        model = copy.deepcopy(self)
        for i, block in enumerate(model.blocks):
            if isinstance(block, PrunableBlock) and block.pruned:
                model.blocks[i] = block.merge()
        return model.eval()


LAYER_KINDS = {"weight": (nn.Conv2d, nn.Linear),
               "norm": (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm),
               "act": (nn.GELU, nn.ReLU)}


@torch.no_grad()
def count_layers(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Layers that one forward pass of ``example`` actually runs: weight (conv, linear), norm, act, total.

    Counted with forward hooks, so modules a block owns but does not call (e.g. the unused norm of its
    other form) are not counted.
    """
    if not isinstance(example, torch.Tensor) or example.dim() < 2 or len(example) == 0:
        raise ValueError(f"count_layers needs a batch of example inputs (N, ...), got "
                         f"{type(example).__name__} {tuple(getattr(example, 'shape', ()))}; pass e.g. x_test[:1].")
    counts = {k: 0 for k in LAYER_KINDS}

    def hook(module, inputs, output):
        for name, types in LAYER_KINDS.items():
            if isinstance(module, types):
                counts[name] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with eval_mode(model):
            model(example[:1].to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    counts["total"] = sum(counts.values())
    return counts


CNN_BLOCKS = {"convnext": PrunableConvNeXtBlock, "bottleneck": PrunableConvBlock}


def _positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive integer, got {value!r}.")


@dataclass(frozen=True)
class ResCNNConfig:
    """``block``: "convnext" (depthwise k×k → LN → 1×1 → GELU → 1×1) or "bottleneck" (1×1 → GN → GELU → k×k)."""

    in_channels: int = 1
    num_classes: int = 10
    channels: int = 16
    expand: int = 64
    depth: int = 6
    kernel: int = 3
    stem_stride: int = 1
    act: str = "gelu"
    block: str = "convnext"

    def __post_init__(self):
        _positive(self, "in_channels", "num_classes", "channels", "expand", "depth", "kernel", "stem_stride")
        if self.kernel % 2 != 1:
            raise ValueError(f"ResCNNConfig.kernel must be odd so the residual lines up, got {self.kernel}.")
        if self.block not in CNN_BLOCKS:
            raise ValueError(f"unknown block {self.block!r}; choose one of {sorted(CNN_BLOCKS)}.")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.act!r}; choose one of {sorted(ACTIVATIONS)}.")


CNN_TINY = ResCNNConfig()  # sklearn digits, 8×8: 6 ConvNeXt blocks of 16 channels (expansion 4×)
CNN_FULL = ResCNNConfig(channels=48, expand=192, depth=8, stem_stride=2)  # Fashion-MNIST, 28×28 → 14×14


class ResCNN(PrunableModel):
    """stem conv → ``depth`` prunable residual blocks → global average pool → linear classifier."""

    def __init__(self, cfg: ResCNNConfig = CNN_TINY):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.channels, 3, stride=cfg.stem_stride, padding=1),
            nn.BatchNorm2d(cfg.channels), make_act(cfg.act))
        self.blocks = nn.ModuleList(
            CNN_BLOCKS[cfg.block](cfg.channels, cfg.expand, cfg.kernel, cfg.act) for _ in range(cfg.depth))
        self.head = nn.Linear(cfg.channels, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, classes)
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected images (B, {self.cfg.in_channels}, H, W), got {tuple(x.shape)}; "
                             "add the channel axis with x[:, None] or set in_channels in the config.")
        _same_dtype(x, self.head.weight)
        x = self.stem(x)  # (B, C, H', W')
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))  # (B, C) -> (B, classes)


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 8
    patch: int = 2
    in_channels: int = 1
    num_classes: int = 10
    dim: int = 32
    heads: int = 2
    depth: int = 4
    mlp_ratio: int = 2
    act: str = "gelu"

    def __post_init__(self):
        _positive(self, "image_size", "patch", "in_channels", "num_classes", "dim", "heads", "depth", "mlp_ratio")
        if self.image_size % self.patch:
            raise ValueError(f"image size {self.image_size} must be a multiple of the patch size {self.patch}; "
                             "choose a patch that divides it.")
        if self.dim % self.heads:
            raise ValueError(f"ViTConfig.dim={self.dim} must be divisible by heads={self.heads}.")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.act!r}; choose one of {sorted(ACTIVATIONS)}.")


VIT_TINY = ViTConfig()  # sklearn digits: 16 tokens of 2×2 patches
VIT_FULL = ViTConfig(image_size=28, patch=4, dim=96, heads=4, depth=8)  # Fashion-MNIST: 49 tokens


class TinyViT(PrunableModel):
    """patch embedding + learned positions → ``depth`` prunable ViT blocks → LN → mean-pool → linear."""

    def __init__(self, cfg: ViTConfig = VIT_TINY):
        super().__init__()
        if cfg.image_size % cfg.patch:
            raise ValueError(f"image size {cfg.image_size} must be a multiple of the patch size {cfg.patch}.")
        self.cfg = cfg
        tokens = (cfg.image_size // cfg.patch) ** 2
        self.embed = nn.Conv2d(cfg.in_channels, cfg.dim, cfg.patch, stride=cfg.patch)
        self.pos = nn.Parameter(torch.randn(1, tokens, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(
            PrunableViTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.act) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, classes)
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels or x.shape[-2:] != (self.cfg.image_size,) * 2:
            raise ValueError(f"expected images (B, {self.cfg.in_channels}, {self.cfg.image_size}, "
                             f"{self.cfg.image_size}), got {tuple(x.shape)}; set image_size in the config to "
                             "the data's size.")
        _same_dtype(x, self.head.weight)
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, T, dim)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))
