r"""Fine-tune a pretrained sequence classifier on sentiment: the loop chapter 3 runs with and without LoRA.

Cross-entropy over the two classes, AdamW over *whichever parameters require gradients* (all of them for full
fine-tuning; LoRA's :math:`A, B` and the head after :func:`minillm.lora_model.inject_lora`), and the usual
BERT schedule, linear warm-up then linear decay:

.. math::

    \eta_t = \eta_{max} \cdot \min\!\Big(\frac{t+1}{t_w},\ \frac{T - t}{T - t_w}\Big)

Each step records the loss and the gradient norm before clipping (a spike in either is what an unstable
learning rate looks like), its wall time and its token count. The memory that training keeps alive,
weights + gradients + AdamW's two moments, is counted exactly by :func:`training_state_bytes`.

Defined in chapter 3.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from minillm.pretrained import TokenizedDataset, make_loader, tokenize_examples
from minillm.profile import Profile, current_profile
from minillm.sentiment import load_sentiment_splits
from minillm.tracking import Tracker


@dataclass(frozen=True)
class LoRAFinetuneConfig:
    corpus: str = "sentences"        # Pang & Lee one-sentence snippets (short: cheap on a CPU)
    max_length: int = 40             # tokens, [CLS] and [SEP] included
    train_examples: int | None = 1280  # a subset of the training split (None: all of it)
    eval_examples: int | None = None   # of the validation / test splits (None: all 400 / 800)
    batch_size: int = 16
    max_steps: int = 80
    warmup_steps: int = 8
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0


#: ``tiny``: one pass over 1,280 sentences, about 30 s per run on 2 CPU cores; ``full``: 3 epochs over all 2,800.
LORA_FINETUNE_PRESETS: dict[str, LoRAFinetuneConfig] = {
    "tiny": LoRAFinetuneConfig(),
    "full": LoRAFinetuneConfig(max_length=64, train_examples=None, eval_examples=None, batch_size=32,
                           max_steps=264, warmup_steps=26),
}


def lora_finetune_config_for_profile(profile: Profile | None = None) -> LoRAFinetuneConfig:
    return LORA_FINETUNE_PRESETS[(profile or current_profile()).name]


@dataclass(frozen=True)
class SentimentData:
    train: TokenizedDataset
    val: TokenizedDataset
    test: TokenizedDataset


def prepare_sentiment(tokenizer, cfg: LoRAFinetuneConfig) -> SentimentData:
    """Tokenized train / validation / test sets of the Pang & Lee corpus, cut to the config's subset sizes."""
    splits = load_sentiment_splits(cfg.corpus, seed=cfg.seed)
    cut = lambda xs, n: xs if n is None else xs[:n]  # noqa: E731 — the splits are already shuffled
    return SentimentData(tokenize_examples(tokenizer, cut(splits.train, cfg.train_examples), cfg.max_length),
                         tokenize_examples(tokenizer, cut(splits.val, cfg.eval_examples), cfg.max_length),
                         tokenize_examples(tokenizer, cut(splits.test, cfg.eval_examples), cfg.max_length))


def lr_factor(step: int, cfg: LoRAFinetuneConfig) -> float:
    """Linear warm-up to 1 over ``warmup_steps``, then linear decay to 0 at ``max_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - cfg.warmup_steps))


def make_adamw(model: nn.Module, lr: float, weight_decay: float, decay_all: bool = False) -> torch.optim.AdamW:
    """AdamW over the trainable parameters only; matrices decay, biases and LayerNorm gains do not.

    ``decay_all=True`` decays every trainable parameter alike (what ``torch.optim.AdamW(params)`` does).
    ``fused=True``: one kernel updates every parameter (CPU and CUDA), several times faster than the default
    per-tensor loop when there are many tensors — the same arithmetic.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameter: nothing to fine-tune "
                         "(did you freeze everything without injecting LoRA, or set trainable_layers=0?)")
    if decay_all:
        groups = [{"params": params, "weight_decay": weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=True)


@dataclass
class FinetuneHistory:
    loss: list[float] = field(default_factory=list)       # every step
    grad_norm: list[float] = field(default_factory=list)  # before clipping
    step_seconds: list[float] = field(default_factory=list)
    examples: int = 0
    tokens: int = 0  # real (unpadded) tokens

    @property
    def examples_per_second(self) -> float:
        return self.examples / sum(self.step_seconds) if self.step_seconds else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / sum(self.step_seconds) if self.step_seconds else float("nan")


def train_classifier(model: nn.Module, train: TokenizedDataset, cfg: LoRAFinetuneConfig, lr: float,
                     device: torch.device | str = "cpu", tracker: Tracker | None = None,
                     progress: bool = True) -> FinetuneHistory:
    """Fine-tune ``model`` (a ``...ForSequenceClassification``) for ``cfg.max_steps`` steps at peak ``lr``."""
    model.to(device).train()
    optimizer = make_adamw(model, lr, cfg.weight_decay)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    tracker = tracker or Tracker(None)
    tracker.log_params({**{f"finetune.{k}": v for k, v in asdict(cfg).items()}, "lr": lr})
    history, step, epoch = FinetuneHistory(), 0, 0
    bar = tqdm(total=cfg.max_steps, desc=f"fine-tuning (lr={lr:g})", disable=not progress, mininterval=2.0)
    while step < cfg.max_steps:
        for batch in make_loader(train, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch):
            if step == cfg.max_steps:
                break
            batch = {k: v.to(device) for k, v in batch.items()}  # input_ids, attention_mask (B, T); labels (B,)
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(step, cfg)
            t0 = time.perf_counter()
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            optimizer.step()
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            history.step_seconds.append(time.perf_counter() - t0)
            history.loss.append(loss.item())
            history.grad_norm.append(norm.item())
            history.examples += batch["labels"].numel()
            history.tokens += int(batch["attention_mask"].sum())
            tracker.log_metrics({"train_loss": history.loss[-1], "grad_norm": history.grad_norm[-1]}, step=step)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{history.loss[-1]:.3f}")
        epoch += 1
    bar.close()
    tracker.log_metrics({"examples_per_second": history.examples_per_second})
    return history


@torch.inference_mode()
def evaluate(model: nn.Module, data: TokenizedDataset, batch_size: int = 64,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data``."""
    was_training = model.training
    model.to(device).eval()
    correct, total_loss, n = 0, 0.0, 0
    for batch in make_loader(data, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        logits = out.logits  # (B, num_labels)
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        total_loss += out.loss.item() * len(batch["labels"])
        n += len(batch["labels"])
    model.train(was_training)
    return {"accuracy": correct / n, "loss": total_loss / n}


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes that live for the whole of training: weights, gradients of the trainable ones, optimizer state.

    Without an optimizer, AdamW's two moments per trainable parameter are assumed (what
    :func:`make_adamw` will allocate at its first step).
    """
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    if optimizer is not None and optimizer.state:
        optim = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                    for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    else:
        optim = 2 * grads
    return {"weights": weights, "gradients": grads, "optimizer": optim, "total": weights + grads + optim}
