"""Labelled texts as token ids, padded batch by batch: the input pipeline of every classifier fine-tune.

Texts become :class:`TokenizedDataset` items (token ids of variable length, special tokens included) and
:func:`collate_padded` pads each batch to its longest member, so short sentences do not pay for long ones:
``input_ids`` (B, T), ``attention_mask`` (B, T) with 1 on real tokens, ``labels`` (B,).

Defined in the foundation (data); chapters 3 (LoRA) and 4 (gradient accumulation) fine-tune on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset


@dataclass(frozen=True)
class TokenizedDataset(Dataset):
    """Token ids per text (variable length, special tokens included) and one class label per text."""

    input_ids: list[list[int]]
    labels: list[int]

    def __post_init__(self):
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"{len(self.input_ids)} token sequences but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.input_ids[i], self.labels[i]


def tokenize_examples(tokenizer, examples: Sequence, max_length: int = 128) -> TokenizedDataset:
    """Tokenize objects with ``.text`` and ``.label`` (e.g. :class:`minillm.data.sentiment.Example`),
    truncating each to ``max_length`` tokens (``[CLS] ... [SEP]`` included)."""
    if max_length < 2:
        raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
    encoded = tokenizer([ex.text for ex in examples], truncation=True, max_length=max_length)
    return TokenizedDataset(list(encoded["input_ids"]), [int(ex.label) for ex in examples])


def collate_padded(batch: Sequence[tuple[list[int], int]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of ``(ids, label)`` to the longest sequence in the batch.

    Returns ``input_ids`` (B, T) long, ``attention_mask`` (B, T) long (1 = real token), ``labels`` (B,).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    longest = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)   # (B, T)
    for row, (ids, _) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)  # (B,)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def make_loader(dataset: TokenizedDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                pad_id: int = 0) -> DataLoader:
    """A ``DataLoader`` with :func:`collate_padded`; ``shuffle`` uses its own seeded generator."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=partial(collate_padded, pad_id=pad_id))


def classifier_forward(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (B, C), labels (B,))`` of a ``...ForSequenceClassification`` model on one padded batch."""
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    return logits, batch["labels"]


def evaluate_text_classifier(model, data: TokenizedDataset, batch_size: int = 64, pad_id: int = 0):
    """Accuracy, mean cross-entropy and per-example correctness on ``data``, in order
    (:func:`minillm.core.evaluation.evaluate_classifier`)."""
    from minillm.core.evaluation import evaluate_classifier

    return evaluate_classifier(model, make_loader(data, batch_size, pad_id=pad_id), classifier_forward)
