r"""Fine-tune a pretrained sequence classifier on sentiment: the loop chapter 3 runs with and without LoRA.

Cross-entropy over the two classes, AdamW over *whichever parameters require gradients* (all of them for full
fine-tuning; LoRA's :math:`A, B` and the head after :func:`minillm.lora.model.inject_lora`), and the usual
BERT schedule, linear warm-up then linear decay to zero (:func:`minillm.core.training.warmup_schedule`):

.. math::

    \eta_t = \eta_{max} \cdot \min\!\Big(\frac{t+1}{t_w},\ \frac{T - t}{T - t_w}\Big)

Each step records the loss and the gradient norm before clipping (a spike in either is what an unstable
learning rate looks like), its wall time and its token count, through the shared step loop
(:func:`minillm.core.training.train_steps`).

Defined in chapter 3.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Iterator

import torch
from torch import nn

from minillm.core.tracking import Tracker
from minillm.core.training import StepOutput, TrainLog, make_adamw, train_steps, warmup_schedule
from minillm.data.sentiment import load_sentiment_splits
from minillm.data.text_classification import TokenizedDataset, make_loader, tokenize_examples


@dataclass(frozen=True)
class ClassifierFinetuneConfig:
    corpus: str = "sentences"        # Pang & Lee one-sentence snippets (short: cheap on a CPU)
    max_length: int = 32             # tokens, [CLS] and [SEP] included (longer sentences are cut)
    train_examples: int | None = 960   # a subset of the training split (None: all of it)
    eval_examples: int | None = None   # of the validation / test splits (None: all 400 / 800)
    batch_size: int = 16
    max_steps: int = 60
    warmup_steps: int = 6
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0

    SMOKE_CAPS: ClassVar[dict[str, int]] = {"train_examples": 32, "eval_examples": 32, "max_steps": 2,
                                            "warmup_steps": 1}

    def __post_init__(self):
        for name in ("batch_size", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}; "
                             f"warm up over about a tenth of the run")
        if self.max_length < 3:
            raise ValueError(f"max_length={self.max_length} leaves no room for a token between [CLS] and [SEP]; "
                             f"use at least 3 (the chapter uses 32)")

    def lr_at(self, step: int, peak: float) -> float:
        """Linear warm-up to ``peak`` over ``warmup_steps``, then linear decay to 0 at ``max_steps``."""
        return warmup_schedule(step, self.max_steps, peak, self.warmup_steps, 0.0, "linear")


#: ``tiny``: one pass over 960 sentences, about 15 s per run on 2 idle CPU cores; ``full``: 3 epochs over all 2,800.
CLASSIFIER_FINETUNE_TINY = ClassifierFinetuneConfig()
CLASSIFIER_FINETUNE_FULL = ClassifierFinetuneConfig(max_length=64, train_examples=None, eval_examples=None,
                                                    batch_size=32, max_steps=264, warmup_steps=26)


@dataclass(frozen=True)
class SentimentData:
    train: TokenizedDataset
    val: TokenizedDataset
    test: TokenizedDataset


def prepare_sentiment(tokenizer, cfg: ClassifierFinetuneConfig) -> SentimentData:
    """Tokenized train / validation / test sets of the Pang & Lee corpus, cut to the config's subset sizes."""
    splits = load_sentiment_splits(cfg.corpus, seed=cfg.seed)
    cut = lambda xs, n: xs if n is None else xs[:n]  # noqa: E731 — the splits are already shuffled
    return SentimentData(tokenize_examples(tokenizer, cut(splits.train, cfg.train_examples), cfg.max_length),
                         tokenize_examples(tokenizer, cut(splits.val, cfg.eval_examples), cfg.max_length),
                         tokenize_examples(tokenizer, cut(splits.test, cfg.eval_examples), cfg.max_length))


def _epochs(train: TokenizedDataset, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    epoch = 0
    while True:  # a fresh seeded shuffle every epoch
        yield from make_loader(train, batch_size, shuffle=True, seed=seed + epoch)
        epoch += 1


def finetune_classifier(model: nn.Module, train: TokenizedDataset, cfg: ClassifierFinetuneConfig, lr: float,
                        device: torch.device | str = "cpu", tracker: Tracker | None = None,
                        progress: bool = True) -> TrainLog:
    """Fine-tune ``model`` (a ``...ForSequenceClassification``) for ``cfg.max_steps`` steps at peak ``lr``."""
    model.to(device)
    optimizer = make_adamw(model, lr, cfg.weight_decay, decay="matrices", fused=True)
    tracker = tracker or Tracker(None)
    tracker.log_params({**{f"finetune.{k}": v for k, v in asdict(cfg).items()}, "lr": lr})

    def backward(batch: dict[str, torch.Tensor]) -> StepOutput:
        batch = {k: v.to(device) for k, v in batch.items()}  # input_ids, attention_mask (B, T); labels (B,)
        loss = model(**batch).loss
        loss.backward()
        return StepOutput(loss.item(), examples=batch["labels"].numel(), tokens=int(batch["attention_mask"].sum()))

    log = train_steps(model, optimizer, _epochs(train, cfg.batch_size, cfg.seed), backward, steps=cfg.max_steps,
                      lr_at=lambda step: cfg.lr_at(step, lr), grad_clip=cfg.grad_clip if cfg.grad_clip > 0 else math.inf,
                      tracker=tracker, postfix=lambda log: {"loss": f"{log.loss[-1]:.3f}"}, progress=progress,
                      desc=f"fine-tuning (lr={lr:g})", mininterval=2.0)
    tracker.log_metrics({"examples_per_second": log.examples_per_second})
    return log
