"""Tests for minillm.data.text_classification: padding, datasets and seeded loaders."""

from __future__ import annotations

import pytest
import torch

from minillm.data.text_classification import TokenizedDataset, collate_padded, make_loader


def test_collate_pads_to_longest_and_masks():
    batch = collate_padded([([101, 7, 102], 1), ([101, 102], 0)], pad_id=0)
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["input_ids"].dtype == torch.long


def test_collate_rejects_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        collate_padded([])


def test_dataset_checks_lengths():
    with pytest.raises(ValueError, match="labels"):
        TokenizedDataset([[1, 2]], [0, 1])


def test_loader_shuffle_is_seeded():
    data = TokenizedDataset([[i] for i in range(20)], [i % 2 for i in range(20)])
    order = lambda seed: [b["input_ids"][:, 0].tolist() for b in make_loader(data, 4, shuffle=True, seed=seed)]
    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(sum(order(1), [])) == list(range(20))
