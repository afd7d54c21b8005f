"""Train/validation split and random next-token batches.

A batch is ``x = data[i : i+T]`` and ``y = data[i+1 : i+T+1]`` for B random offsets ``i``: the target
at every position is the next character.

Defined in chapter 1; used by chapters 1, 2 and 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenSplits:
    """A token stream split into a training head and a validation tail."""

    train: torch.Tensor  # (N_train,) int64
    val: torch.Tensor  # (N_val,) int64

    @classmethod
    def from_tokens(cls, tokens: torch.Tensor, val_fraction: float = 0.1) -> "TokenSplits":
        """The first ``1 - val_fraction`` of ``tokens`` for training, the rest for validation."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n_train = int(len(tokens) * (1.0 - val_fraction))
        return cls(train=tokens[:n_train], val=tokens[n_train:])

    def split(self, name: str) -> torch.Tensor:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val


def get_batch(
    data: torch.Tensor,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``batch_size`` windows of length ``block_size``: returns x, y of shape (B, T)."""
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be positive, got {batch_size} and {block_size}")
    if data.dim() != 1 or data.is_floating_point():
        raise ValueError(f"data must be a 1-D tensor of token ids, got {data.dtype} of shape {tuple(data.shape)}; "
                         "encode the text with a tokenizer first")
    if len(data) <= block_size:
        raise ValueError(f"need more than block_size={block_size} tokens, got {len(data)}")
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i : i + block_size] for i in starts.tolist()])  # (B, T)
    y = torch.stack([data[i + 1 : i + 1 + block_size] for i in starts.tolist()])  # (B, T)
    return x.to(device), y.to(device)


def sequential_windows(data: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every non-overlapping window of ``data``: x, y of shape (N // T, T), for deterministic evaluation."""
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    n = (len(data) - 1) // block_size
    if n == 0:
        raise ValueError(f"need more than block_size={block_size} tokens, got {len(data)}")
    x = data[: n * block_size].view(n, block_size)
    y = data[1 : n * block_size + 1].view(n, block_size)
    return x, y
