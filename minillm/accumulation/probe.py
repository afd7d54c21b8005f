r"""Linear probes on frozen sentence features: the seeds study at a size a shared CPU affords.

Fine-tuning every MiniLM weight costs about a tenth of a CPU second per training example, so five seeds of
four schemes do not fit a shared two-core machine. The probe computes MiniLM's sentence embeddings
:math:`e_i` once (masked mean pooling, unit norm: :func:`minillm.pretrained.embed`) and trains only a linear
head on them,

.. math::  z_i = W\,\mathrm{dropout}(e_i) + b, \qquad W \in \mathbb{R}^{2 \times 384},

with the same step loop, the same micro-batches and the same stepping rules as
:func:`minillm.accumulation.run_scheme`: :class:`FeatureClassifier` takes a micro-batch whose ``input_ids``
are row indices into the feature table, so :func:`~minillm.accumulation.train_accumulated` runs unchanged.
The seed fixes the head's initialisation, the order of the examples and the dropout masks; the split is
fixed (``split_seed``), so every run is tested on the same sentences.

Defined in chapter 4 (gradient accumulation).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from minillm.accumulation.accumulate import train_accumulated
from minillm.accumulation.experiment import RunResult, Scheme, _scheme
from minillm.accumulation.stepping import step_groups
from minillm.core.evaluation import evaluate_classifier, tensor_batches
from minillm.core.memory import training_state_bytes
from minillm.core.training import make_adamw
from minillm.data.sentiment import load_sentiment_splits
from minillm.pretrained.minilm import embed, load_minilm_encoder


@dataclass(frozen=True)
class ProbeConfig:
    """A probe run. ``*_size`` None = the whole split; ``lr`` is the rate of the batch of 16."""

    train_size: int | None = 512
    val_size: int | None = 200
    test_size: int | None = None
    max_length: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    epochs: int = 4
    dropout: float = 0.1
    split_seed: int = 0

    SMOKE_CAPS: ClassVar[dict[str, int]] = {"train_size": 16, "val_size": 16, "test_size": 16, "epochs": 1}

    def __post_init__(self):
        for name in ("train_size", "val_size", "test_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None (the whole split) or an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be a positive learning rate, got {self.lr!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {self.max_length}")


#: tiny: 512 training sentences, four epochs; full: the whole training split
PROBE_TINY = ProbeConfig()
PROBE_FULL = ProbeConfig(train_size=None, val_size=None)


class ProbeFeatures(NamedTuple):
    """Frozen sentence embeddings (n, D) and labels (n,) of the train, validation and test sentences."""

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor


def probe_features(cfg: ProbeConfig, device: torch.device | str = "cpu") -> ProbeFeatures:
    """Embed the split's sentences once with the frozen MiniLM encoder."""
    if not isinstance(cfg, ProbeConfig):
        raise TypeError(f"cfg must be a ProbeConfig, got {type(cfg).__name__}: use PROBE_TINY, PROBE_FULL or "
                        "ProbeConfig(...)")
    splits = load_sentiment_splits("sentences", seed=cfg.split_seed)
    model, tokenizer = load_minilm_encoder(device)
    parts = []
    for examples in (splits.train[:cfg.train_size], splits.val[:cfg.val_size], splits.test[:cfg.test_size]):
        parts.append(embed(model, tokenizer, [ex.text for ex in examples], max_length=cfg.max_length).cpu())
        parts.append(torch.tensor([ex.label for ex in examples], dtype=torch.long))
    return ProbeFeatures(*parts)


class ProbeOutput(NamedTuple):
    logits: torch.Tensor


class FeatureClassifier(nn.Module):
    """A linear head over a frozen feature table; a micro-batch's ``input_ids`` (B, 1) are row indices."""

    def __init__(self, features: torch.Tensor, num_labels: int = 2, dropout: float = 0.1, seed: int = 0):
        super().__init__()
        if features.dim() != 2 or not features.is_floating_point():
            raise ValueError(f"features must be a float tensor (n, D), got {tuple(features.shape)} {features.dtype}: "
                             "pass sentence embeddings such as minillm.pretrained.embed returns")
        self.register_buffer("features", features)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features.shape[1], num_labels)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.02, generator=g)  # BERT's initialisation of a new head
            self.head.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ProbeOutput:
        rows = self.features[input_ids[:, 0]]            # (B, D)
        return ProbeOutput(self.head(self.dropout(rows)))  # (B, C)


def _index_batches(labels: torch.Tensor, micro_batch_size: int, seed: int, epochs: int) -> list[dict]:
    # The same shuffled order for every scheme of a seed (one permutation per epoch); consecutive chunks.
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=g)
        for i in range(0, len(order), micro_batch_size):
            idx = order[i:i + micro_batch_size]
            batches.append({"input_ids": idx[:, None], "attention_mask": torch.ones(len(idx), 1, dtype=torch.long),
                            "labels": labels[idx]})
    return batches


def _accuracy(head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[float, str]:
    result = evaluate_classifier(head, tensor_batches(x, y, 256), lambda m, b: (m(b[0]), b[1]))
    return result.accuracy, "".join("1" if c else "0" for c in result.correct.tolist())


def run_probe(scheme: Scheme | str, features: ProbeFeatures, cfg: ProbeConfig, lr: float | None = None,
              seed: int = 0, name: str | None = None) -> RunResult:
    """Train the linear probe with one batching scheme; accuracies on the validation and test features."""
    if not isinstance(features, ProbeFeatures):
        raise TypeError(f"features must be the ProbeFeatures that probe_features returns, got "
                        f"{type(features).__name__}: compute them once with probe_features(cfg)")
    label, scheme = _scheme(scheme)
    lr = cfg.lr if lr is None else lr
    model = FeatureClassifier(features.train, int(features.train_labels.max()) + 1, cfg.dropout, seed)
    # the epochs as one list of micro-batches: 512 examples make a whole number of steps of 16, so a rule that
    # counts micro-batches from 0 treats the list as it would treat the epochs one after the other
    batches = _index_batches(features.train_labels, scheme.micro_batch_size, seed, cfg.epochs)
    optimizer = make_adamw(model, lr, cfg.weight_decay, decay="all")
    torch.manual_seed(seed)  # dropout masks repeat across schemes
    start, cpu0 = time.perf_counter(), time.process_time()
    log = train_accumulated(model, batches, optimizer, scheme.accumulation_steps, rule=scheme.rule, progress=False,
                            desc=name or label)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    applied = sum(len(batches[b]["labels"]) for group in step_groups(range(len(batches)), scheme.accumulation_steps,
                                                                      scheme.rule) for b in group)
    val_accuracy, _ = _accuracy(model.head, features.val, features.val_labels)
    test_accuracy, test_correct = _accuracy(model.head, features.test, features.test_labels)
    return RunResult(name or label, scheme.micro_batch_size, scheme.accumulation_steps, scheme.rule, lr, seed,
                     log.loss, applied, val_accuracy, test_accuracy, test_correct, seconds, cpu, 0,
                     training_state_bytes(model).total, None)
