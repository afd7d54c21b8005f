"""Prunable blocks: the UPDP block-pruning strategy, for two residual CNN blocks and a ViT MLP block.

A block is pruned by making everything between its input and its residual sum *linear*, so the whole block
collapses into one layer by reparameterisation (:mod:`minillm.prune.reparam`):

* activation → identity, progressively:  ``act_λ(x) = (1 − λ)·act(x) + λ·x``  (λ: 0 → 1 during training);
* LayerNorm / GroupNorm → BatchNorm (BN is affine at inference, LN/GN are not);
* an activation and a BN are inserted *after* the block, so the merged layer is a plain ``conv → act``
  (the BN fuses into the conv) and the network keeps a non-linearity at that depth;
* in the bottleneck block (1×1 then k×k) padding lives on the first conv and stride on the last, which makes
  the 1×1 → k×k merge exact; the ConvNeXt block (depthwise k×k, then two 1×1) needs no such move, because
  k×k → 1×1 merges exactly for any padding.

Pruned bottleneck block:  ``y = act(BN_post(x + conv_k(act_λ(BN(conv_1(x))))))``  → merged: ``act(conv_k'(x))``.
Pruned ConvNeXt block:    ``y = act(BN_post(x + pw₂(act_λ(pw₁(BN(dw_k(x)))))))``  → merged: ``act(conv_k'(x))``.
Pruned ViT block:   ``y = x + attn(LN(x));  z = GELU(BN_post(y + fc₂(act_λ(fc₁(BN(y))))))`` → ``GELU(FC'(y))``.

Defined in chapter 6 (UPDP depth pruning).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from minillm.prune import reparam

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def make_act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


class ProgressiveAct(nn.Module):
    """``act_λ(x) = (1 − λ)·act(x) + λ·x``: the activation at λ = 0, the identity at λ = 1."""

    def __init__(self, act: str = "gelu"):
        super().__init__()
        self.act = make_act(act)

    def forward(self, x: torch.Tensor, lam: float = 0.0) -> torch.Tensor:
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"λ must lie in [0, 1], got {lam}; schedule it with lambda_schedule (0 = activation, "
                             "1 = identity).")
        if lam == 1.0:
            return x
        if lam == 0.0:  # the plain activation: no extra multiply-adds (what the latency split times)
            return self.act(x)
        return (1.0 - lam) * self.act(x) + lam * x


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channel axis of tokens (B, T, C): statistics over all B·T tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"TokenBatchNorm expects (B, T, C) tokens, got shape {tuple(x.shape)}; use "
                             "nn.BatchNorm1d for (N, C) features.")
        b, t, c = x.shape
        return super().forward(x.reshape(b * t, c)).reshape(b, t, c)


class PrunableBlock(nn.Module):
    """Shared switches: ``pruned`` picks the pruned form, ``lam`` the progress of act → identity."""

    pruned: bool
    lam: float

    def _check_mergeable(self) -> None:
        if not self.pruned or self.lam != 1.0:
            raise ValueError(f"only a pruned block at λ = 1 is linear and can merge (pruned={self.pruned}, "
                             f"λ={self.lam}); call set_subnet/set_lambda(1.0) and train at λ = 1 first.")
        if self.training:
            raise ValueError("merge in eval mode: call model.eval() first, since BatchNorm fuses its running statistics.")


class PrunableConvBlock(PrunableBlock):
    """Bottleneck residual block ``x + conv_k(act(GN(conv_1(x))))`` that UPDP can prune to one conv.

    Its padding sits on the 1×1 conv (the condition for an exact 1×1 → k×k merge), so the GroupNorm sees the
    padded (H+2p)×(W+2p) map; the ConvNeXt block below needs no such change to the baseline.
    """

    def __init__(self, channels: int, expand: int, kernel: int = 3, act: str = "gelu", groups: int = 1):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd so the residual lines up, got {kernel}; use 3, 5 or 7.")
        # padding on the 1×1 conv (not the k×k): the condition under which 1×1 → k×k merges exactly
        self.conv1 = nn.Conv2d(channels, expand, 1, padding=kernel // 2)
        self.norm = nn.GroupNorm(groups, expand)  # full block: GN (LN over channels when groups=1)
        self.norm_bn = nn.BatchNorm2d(expand)  # pruned block: BN, which fuses into conv1
        self.act = ProgressiveAct(act)
        self.conv2 = nn.Conv2d(expand, channels, kernel, padding=0)
        self.post_bn = nn.BatchNorm2d(channels)  # inserted after the pruned block
        self.post_act = make_act(act)
        self.pruned, self.lam = False, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        h = self.conv1(x)  # (B, E, H+2p, W+2p)
        if not self.pruned:
            return x + self.conv2(self.act(self.norm(h), 0.0))
        y = x + self.conv2(self.act(self.norm_bn(h), self.lam))  # (B, C, H, W)
        return self.post_act(self.post_bn(y))

    @torch.no_grad()
    def merge(self) -> nn.Sequential:
        """``conv → act`` equal to this pruned block at λ = 1 (eval mode)."""
        self._check_mergeable()
        first = reparam.fuse_conv_bn(self.conv1, self.norm_bn)  # 1×1 with padding p
        conv = reparam.merge_1x1_kxk(first, self.conv2)  # k×k, padding p
        conv = reparam.add_identity_conv(conv)  # + x
        conv = reparam.fuse_conv_bn(conv, self.post_bn)
        return nn.Sequential(conv, copy.deepcopy(self.post_act))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of (B, C, H, W) maps, as ConvNeXt normalises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"ChannelLayerNorm expects (B, C, H, W) maps, got shape {tuple(x.shape)}; "
                             "use nn.LayerNorm on (B, T, C) tokens.")
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # normalise over C


class PrunableConvNeXtBlock(PrunableBlock):
    """ConvNeXt block ``x + pw₂(GELU(pw₁(LN(dw_k(x)))))`` (depthwise k×k, 1×1 expansion, 1×1 projection).

    Pruned: LN → BN, GELU → act_λ, then BN and GELU after the residual. At λ = 1 the merge folds the BN
    into the depthwise conv (a grouped conv + BN), then both 1×1 convs into it (k×k → 1×1, exact for the
    depthwise conv's 'same' padding) and the residual as an identity kernel: one dense k×k conv → GELU.
    """

    def __init__(self, channels: int, expand: int, kernel: int = 3, act: str = "gelu"):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd so the residual lines up, got {kernel}; use 3, 5 or 7.")
        self.dw = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)  # depthwise
        self.norm = ChannelLayerNorm(channels)  # full block: LN over channels, as ConvNeXt
        self.norm_bn = nn.BatchNorm2d(channels)  # pruned block: BN, which fuses into the depthwise conv
        self.pw1 = nn.Conv2d(channels, expand, 1)  # expansion
        self.act = ProgressiveAct(act)
        self.pw2 = nn.Conv2d(expand, channels, 1)  # projection
        self.post_bn = nn.BatchNorm2d(channels)
        self.post_act = make_act(act)
        self.pruned, self.lam = False, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        h = self.dw(x)  # (B, C, H, W)
        if not self.pruned:
            return x + self.pw2(self.act(self.pw1(self.norm(h)), 0.0))  # pw1: (B, E, H, W)
        y = x + self.pw2(self.act(self.pw1(self.norm_bn(h)), self.lam))
        return self.post_act(self.post_bn(y))

    @torch.no_grad()
    def merge(self) -> nn.Sequential:
        """``conv → act`` equal to this pruned block at λ = 1 (eval mode): one dense k×k conv."""
        self._check_mergeable()
        conv = reparam.fuse_conv_bn(self.dw, self.norm_bn)  # depthwise k×k + BN: still depthwise
        conv = reparam.merge_kxk_1x1(conv, self.pw1)  # dense k×k, C → E
        conv = reparam.merge_kxk_1x1(conv, self.pw2)  # dense k×k, C → C
        conv = reparam.add_identity_conv(conv)  # + x
        conv = reparam.fuse_conv_bn(conv, self.post_bn)
        return nn.Sequential(conv, copy.deepcopy(self.post_act))


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, T, C), no mask (an image has no order to hide)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}; choose a head count that divides dim.")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class PrunableViTBlock(PrunableBlock):
    """Pre-norm ViT block; UPDP prunes its MLP half (LN → BN, GELU → identity, BN & GELU after)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, act: str = "gelu"):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)  # full block
        self.bn2 = TokenBatchNorm(dim)  # pruned block: fuses into fc1
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = ProgressiveAct(act)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.post_bn = TokenBatchNorm(dim)
        self.post_act = make_act(act)
        self.pruned, self.lam = False, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.attn(self.ln1(x))
        if not self.pruned:
            return x + self.fc2(self.act(self.fc1(self.ln2(x)), 0.0))
        y = x + self.fc2(self.act(self.fc1(self.bn2(x)), self.lam))
        return self.post_act(self.post_bn(y))

    @torch.no_grad()
    def merge(self) -> "MergedViTBlock":
        """Attention half kept; MLP half (BN, fc1, fc2, residual, BN) folded into one FC, then GELU."""
        self._check_mergeable()
        fc = reparam.merge_linears(reparam.fuse_bn_linear(self.bn2, self.fc1), self.fc2)
        fc = reparam.fuse_linear_bn(reparam.add_identity_linear(fc), self.post_bn)
        return MergedViTBlock(self.ln1, self.attn, fc, copy.deepcopy(self.post_act))


class MergedViTBlock(nn.Module):
    """``y = x + attn(LN(x)); act(FC(y))`` — a pruned ViT block after merging."""

    def __init__(self, ln1: nn.LayerNorm, attn: Attention, fc: nn.Linear, act: nn.Module):
        super().__init__()
        self.ln1, self.attn, self.fc, self.act = ln1, attn, fc, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return self.act(self.fc(x))
