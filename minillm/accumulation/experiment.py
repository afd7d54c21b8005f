"""Fine-tuning a sentiment classifier with and without gradient accumulation, and what each costs.

Chapter 4 compares three ways to train on the same examples in the same order:

* batch size 1 — one optimizer step per example (noisy updates, smallest memory);
* micro-batch 1 × accumulation 16 — the *gradient* of batch 16 at the *memory* of batch 1;
* batch size 16 — the reference the accumulated run must match, when memory allows.

Memory is measured, not estimated: on CUDA with ``torch.cuda.max_memory_allocated`` around training; on any
device, :func:`minillm.core.memory.saved_activation_bytes` counts what autograd keeps for the backward pass
(the part that grows with the micro-batch), and :func:`minillm.core.memory.training_state_bytes` counts
parameters, gradients and AdamW's two moments (the part that does not).

The original experiment fine-tunes ``bigscience/bloom-560m``, which cannot be fetched offline
(:func:`minillm.pretrained.bloom_classifier` keeps that code path); accuracy results here use the pretrained
MiniLM encoder (:mod:`minillm.pretrained.minilm`).

Defined in chapter 4 (gradient accumulation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from minillm.accumulation.accumulate import summed_loss, train_accumulated
from minillm.core.memory import saved_activation_bytes, training_state_bytes
from minillm.core.training import make_adamw
from minillm.data.sentiment import load_sentiment_splits
from minillm.data.text_classification import evaluate_text_classifier, make_loader, tokenize_examples
from minillm.pretrained.minilm import load_minilm_classifier


@dataclass(frozen=True)
class AccumulationConfig:
    """One accuracy experiment. ``train_size``/``test_size`` None = the whole split."""

    corpus: str = "sentences"
    train_size: int | None = None
    test_size: int | None = None
    max_length: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01  # AdamW's default, on every trained parameter
    epochs: int = 1
    trainable_layers: int | None = None  # top encoder layers to train (None: all); the head always trains
    seed: int = 0
    amp: bool = False  # bfloat16 autocast
    compile: bool = False  # torch.compile the model

    SMOKE_CAPS: ClassVar[dict[str, int]] = {"train_size": 32, "test_size": 32, "epochs": 1}


#: tiny: every layer trains (a full fine-tune, as in the reference experiment) on 1,024 short sentences, tested on
#: the whole 800-sentence test split; full: the whole training split, two epochs, bfloat16 autocast, compile.
ACCUMULATION_TINY = AccumulationConfig(train_size=1024, test_size=None, max_length=32, epochs=1)
ACCUMULATION_FULL = AccumulationConfig(max_length=64, epochs=2, amp=True, compile=True)


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
    name: str
    micro_batch_size: int
    accumulation_steps: int
    step_losses: list[float]
    test_accuracy: float
    seconds: float
    activation_bytes: int
    state_bytes: int
    cuda_peak_bytes: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def run_scheme(name: str, micro_batch_size: int, accumulation_steps: int, cfg: AccumulationConfig,
               device: torch.device | str = "cpu", tracker=None, progress: bool = True) -> RunResult:
    """Fine-tune MiniLM on the sentiment split with one batching scheme and report accuracy and memory.

    Every scheme sees the same examples in the same order (same seed), so they differ only in how
    gradients are grouped into optimizer steps.
    """
    device = torch.device(device)
    splits = load_sentiment_splits(cfg.corpus, seed=cfg.seed)
    model, tokenizer = load_minilm_classifier(num_labels=2, seed=cfg.seed)
    freeze_lower_layers(model, cfg.trainable_layers)
    model.to(device)
    train = tokenize_examples(tokenizer, splits.train[:cfg.train_size], cfg.max_length)
    test = tokenize_examples(tokenizer, splits.test[:cfg.test_size], cfg.max_length)
    pad = tokenizer.pad_token_id
    train_loader = make_loader(train, micro_batch_size, shuffle=True, seed=cfg.seed, pad_id=pad)
    amp_dtype = torch.bfloat16 if cfg.amp else None
    probe = {k: v.to(device) for k, v in next(iter(make_loader(train, micro_batch_size, pad_id=pad))).items()}
    model.train()  # dropout masks are saved for backward too: measure the training forward pass
    activations = saved_activation_bytes(model, lambda: summed_loss(model, probe, "examples"))
    trained = torch.compile(model) if cfg.compile else model
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay, decay="all", fused=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(cfg.seed)  # dropout masks repeat across schemes
    log = train_accumulated(trained, train_loader, optimizer, accumulation_steps, epochs=cfg.epochs,
                            autocast_dtype=amp_dtype, tracker=tracker, progress=progress, desc=name)
    cuda_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    accuracy = evaluate_text_classifier(model, test, 64, pad).accuracy
    if tracker is not None:
        tracker.log_metrics({"test_accuracy": accuracy, "activation_bytes": activations})
    return RunResult(name, micro_batch_size, accumulation_steps, log.loss, accuracy, log.wall_seconds,
                     activations, training_state_bytes(model).total, cuda_peak)
