"""Fine-tuning a sentiment classifier with and without gradient accumulation, and what each costs.

Chapter 4 compares ways to train on the same examples in the same order (one :class:`Scheme` each):

* batch size 1 — one optimizer step per example (noisy updates, smallest memory);
* micro-batch 1 × accumulation 16 — the *gradient* of batch 16 at the *memory* of batch 1;
* batch size 16 — the reference the accumulated run must match, when memory allows;
* accumulation 16 with either stepping rule of the reference scripts (:mod:`minillm.accumulation.stepping`).

A run's examples per optimizer step are ``micro_batch_size × accumulation_steps``; the seed fixes the split, the
new head's initialisation, the order of the examples and the dropout masks, so two schemes with the same seed
differ only in how gradients are grouped into updates (and the learning rate, when it is tuned).

Memory is measured, not estimated: :func:`minillm.accumulation.memory_cap.activation_cap` counts what autograd
saves for the backward pass of the run's largest micro-batch (its longest examples) and, with
``activation_cap_mib`` set, refuses the run when that exceeds the cap; on CUDA ``torch.cuda.max_memory_allocated``
is recorded around training; :func:`minillm.core.memory.training_state_bytes` counts weights, gradients and
AdamW's two moments (the part that does not grow with the micro-batch).

The original experiment fine-tunes ``bigscience/bloom-560m``, which cannot be fetched offline
(:func:`minillm.pretrained.bloom_classifier` keeps that code path); accuracy results here use the pretrained
MiniLM encoder (:mod:`minillm.pretrained.minilm`).

Defined in chapter 4 (gradient accumulation).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import ClassVar

import torch

from minillm.accumulation.accumulate import summed_loss, train_accumulated
from minillm.accumulation.memory_cap import MiB, activation_cap, check_micro_batch
from minillm.accumulation.stepping import STEP_RULES, step_groups
from minillm.core.memory import training_state_bytes
from minillm.core.training import make_adamw
from minillm.data.sentiment import CORPORA, load_sentiment_splits
from minillm.data.text_classification import (collate_padded, evaluate_text_classifier, make_loader,
                                              tokenize_examples)
from minillm.pretrained.minilm import load_minilm_classifier


@dataclass(frozen=True)
class AccumulationConfig:
    """One fine-tuning experiment. ``*_size`` None = the whole split; ``activation_cap_mib`` None = no cap."""

    corpus: str = "sentences"
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    max_length: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01  # AdamW's default, on every trained parameter
    epochs: int = 1
    trainable_layers: int | None = None  # top encoder layers to train (None: all); the head always trains
    seed: int = 0
    amp: bool = False  # bfloat16 autocast
    compile: bool = False  # torch.compile the model
    activation_cap_mib: float | None = None  # refuse micro-batches that save more activations than this

    SMOKE_CAPS: ClassVar[dict[str, int]] = {"train_size": 16, "val_size": 16, "test_size": 16, "epochs": 1}

    def __post_init__(self):
        if self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; choose one of {sorted(CORPORA)}")
        for name in ("train_size", "val_size", "test_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be None (the whole split) or an integer >= 0, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be a positive learning rate, got {self.lr!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {self.epochs!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {self.max_length}")
        if self.activation_cap_mib is not None and not self.activation_cap_mib > 0:
            raise ValueError(f"activation_cap_mib must be None (no cap) or positive, got {self.activation_cap_mib!r}")


#: tiny: every layer trains (a full fine-tune, as in the reference experiment) on 512 short sentences, validated on
#: 200 and tested on the whole 800-sentence test split; full: the whole training split, two epochs, bfloat16
#: autocast. Neither compiles: torch.compile recompiles for every padded length, which costs more than these runs
#: save. (The seeds study trains a linear probe instead: :mod:`minillm.accumulation.probe`.)
ACCUMULATION_TINY = AccumulationConfig(train_size=512, val_size=200, max_length=32, epochs=1)
ACCUMULATION_FULL = AccumulationConfig(max_length=64, epochs=2, amp=True)

#: The memory-limited setting: whole movie reviews (≈850 tokens on average) truncated to MiniLM's 512 positions,
#: on an accelerator that leaves 512 MiB for activations — one review fits, two do not (with the CPU's attention
#: kernels). Tiny trains one accumulated step to show it fits; full (a GPU) trains on the whole training split.
REVIEWS_TINY = AccumulationConfig(corpus="reviews", train_size=16, val_size=0, test_size=0, max_length=512,
                                  activation_cap_mib=512)
REVIEWS_FULL = AccumulationConfig(corpus="reviews", max_length=512, epochs=2, activation_cap_mib=512)


@dataclass(frozen=True)
class Scheme:
    """How a run groups examples into optimizer steps."""

    micro_batch_size: int
    accumulation_steps: int = 1
    rule: str = "every_k"

    def __post_init__(self):
        for name in ("micro_batch_size", "accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.rule not in STEP_RULES:
            raise ValueError(f"unknown stepping rule {self.rule!r}; choose one of {STEP_RULES}")

    @property
    def examples_per_step(self) -> int:
        return self.micro_batch_size * self.accumulation_steps


SCHEMES = {
    "batch 1": Scheme(1, 1),
    "accumulation 16": Scheme(1, 16),
    "batch 16": Scheme(16, 1),
    "accumulation 16, reference rule": Scheme(1, 16, "reference"),
    "accumulation 16, reference zero-first": Scheme(1, 16, "reference_zero_first"),
}


def freeze_lower_layers(model: torch.nn.Module, trainable_layers: int | None) -> int:
    """Train only the top ``trainable_layers`` encoder layers, the pooler and the head; return #trainable."""
    if trainable_layers is not None:
        layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
        if layers is None:
            raise TypeError(f"freeze_lower_layers supports BERT-style encoders (base_model.encoder.layer); "
                            f"{type(model).__name__} has none — pass trainable_layers=None to train everything")
        if not 0 <= trainable_layers <= len(layers):
            raise ValueError(f"trainable_layers must be in [0, {len(layers)}], got {trainable_layers}")
        for p in model.base_model.parameters():
            p.requires_grad_(False)
        for layer in list(layers)[len(layers) - trainable_layers:]:
            layer.requires_grad_(True)
        if getattr(model.base_model, "pooler", None) is not None:
            model.base_model.pooler.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class RunResult:
    """One fine-tuning run: its scheme and settings, per-step losses, accuracies, time and memory."""

    name: str
    micro_batch_size: int
    accumulation_steps: int
    rule: str
    lr: float
    seed: int
    step_losses: list[float]
    examples_applied: int        # training examples whose gradient reached an update (the rule may drop some)
    val_accuracy: float | None
    test_accuracy: float | None
    test_correct: str            # per test example, in split order: "1" correct, "0" wrong
    seconds: float
    cpu_seconds: float
    activation_bytes: int        # saved by the forward pass of the largest micro-batch
    state_bytes: int
    cuda_peak_bytes: int | None

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=2)
def _pretrained_classifier(seed: int):
    # A study runs several schemes per seed: load the pretrained weights (and draw the new head) once per seed.
    return load_minilm_classifier(num_labels=2, seed=seed)


def _scheme(scheme: Scheme | str) -> tuple[str, Scheme]:
    if isinstance(scheme, Scheme):
        return (f"micro-batch {scheme.micro_batch_size} x {scheme.accumulation_steps}"
                + ("" if scheme.rule == "every_k" else f", {scheme.rule}")), scheme
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {sorted(SCHEMES)} or pass a Scheme(...)")
    return scheme, SCHEMES[scheme]


def run_scheme(scheme: Scheme | str, cfg: AccumulationConfig, device: torch.device | str = "cpu", tracker=None,
               progress: bool = True, name: str | None = None) -> RunResult:
    """Fine-tune MiniLM on the sentiment split with one batching scheme and report accuracy and memory.

    Raises:
        ActivationCapExceeded: when ``cfg.activation_cap_mib`` is set and the largest micro-batch does not fit;
            the message names the micro-batch size and accumulation steps that do.
    """
    label, scheme = _scheme(scheme)
    name = name or label
    device = torch.device(device)
    splits = load_sentiment_splits(cfg.corpus, seed=cfg.seed)
    model, tokenizer = _pretrained_classifier(cfg.seed)
    model = copy.deepcopy(model)  # the cached copy stays untouched for the next run with this seed
    freeze_lower_layers(model, cfg.trainable_layers)
    model.to(device)
    pad = tokenizer.pad_token_id
    train = tokenize_examples(tokenizer, splits.train[:cfg.train_size], cfg.max_length)
    if len(train) == 0:
        raise ValueError("train_size=0 leaves nothing to train on; use None for the whole split")
    m = scheme.micro_batch_size
    longest = sorted(range(len(train)), key=lambda i: -len(train.input_ids[i]))[:m]
    probe = {k: v.to(device) for k, v in collate_padded([train[i] for i in longest], pad).items()}
    model.train()  # dropout masks are saved for backward too: measure the training forward pass
    cap = None if cfg.activation_cap_mib is None else int(cfg.activation_cap_mib * MiB)
    if cap is not None:
        activations = check_micro_batch(model, probe, cap, lambda b: summed_loss(model, b, "examples"))
    else:
        with activation_cap(model, None) as meter:
            out = summed_loss(model, probe, "examples")
        activations = meter.bytes
        del out
    trained = torch.compile(model) if cfg.compile else model
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay, decay="all", fused=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loader = make_loader(train, m, shuffle=True, seed=cfg.seed, pad_id=pad)
    torch.manual_seed(cfg.seed)  # dropout masks repeat across schemes
    cpu0 = time.process_time()
    log = train_accumulated(trained, loader, optimizer, scheme.accumulation_steps, epochs=cfg.epochs,
                            rule=scheme.rule, autocast_dtype=torch.bfloat16 if cfg.amp else None,
                            activation_cap_bytes=cap, tracker=tracker, progress=progress, desc=name)
    cpu = time.process_time() - cpu0
    cuda_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    sizes = [min(m, len(train) - b * m) for b in range(len(loader))]  # examples per micro-batch
    applied = sum(sizes[b] for group in step_groups(range(len(loader)), scheme.accumulation_steps, scheme.rule,
                                                    cfg.epochs) for b in group)

    def accuracy(examples):
        if not examples:
            return None, ""
        result = evaluate_text_classifier(model, tokenize_examples(tokenizer, examples, cfg.max_length), 64, pad)
        return result.accuracy, "".join("1" if c else "0" for c in result.correct.tolist())

    val_accuracy, _ = accuracy(splits.val[:cfg.val_size])
    test_accuracy, test_correct = accuracy(splits.test[:cfg.test_size])
    if tracker is not None:
        tracker.log_metrics({k: v for k, v in {"val_accuracy": val_accuracy, "test_accuracy": test_accuracy,
                                               "activation_bytes": activations}.items() if v is not None})
    return RunResult(name, m, scheme.accumulation_steps, scheme.rule, cfg.lr, cfg.seed, log.loss,
                     applied, val_accuracy, test_accuracy, test_correct, log.wall_seconds, cpu,
                     activations, training_state_bytes(model).total, cuda_peak)

