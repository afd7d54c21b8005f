r"""Training and evaluating a language model: random next-token batches, periodic loss estimates, exact loss.

Training runs the shared step loop (:func:`minillm.core.training.train_steps`) with AdamW (matrices decayed)
and a warm-up + cosine schedule, on batches of ``block_size`` windows; every ``eval_interval`` steps it
estimates the train and validation losses on a few random batches (cheap, for curves). Reported figures
use :func:`evaluate_loss`, the exact mean over every non-overlapping window of a split.

Loss is in nats per token; perplexity is :math:`e^{\mathcal{L}}`.

Defined in chapter 1; chapter 2 trains its MoE language model with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, ClassVar, Iterator

import torch
from torch import nn

from minillm.core.evaluation import eval_mode
from minillm.core.tracking import Tracker
from minillm.core.training import StepOutput, make_adamw, train_steps, warmup_schedule
from minillm.data.lm_batches import TokenSplits, get_batch, sequential_windows


@dataclass(frozen=True)
class LMTrainConfig:
    max_iters: int = 1200
    batch_size: int = 32
    learning_rate: float = 2e-3
    min_lr: float = 2e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 200
    eval_iters: int = 20
    seed: int = 1337

    #: a smoke run keeps the model and its code paths but takes 3 steps of 8 windows (a full-profile step of 64
    #: windows of 256 tokens is a teraflop: a minute on a laptop CPU)
    SMOKE_CAPS: ClassVar[dict[str, int]] = {"max_iters": 3, "warmup_iters": 1, "eval_interval": 3, "eval_iters": 2,
                                            "batch_size": 8}

    def __post_init__(self):
        for name in ("max_iters", "batch_size", "eval_interval", "eval_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"LMTrainConfig.{name} must be a positive integer, got {value!r}")
        if not 0 <= self.warmup_iters <= self.max_iters:
            raise ValueError(f"warmup_iters={self.warmup_iters} must lie in [0, max_iters={self.max_iters}]; "
                             "shorten the warm-up or train longer")
        if not (0 <= self.min_lr <= self.learning_rate and math.isfinite(self.learning_rate)):
            raise ValueError(f"need 0 <= min_lr <= learning_rate (finite), got min_lr={self.min_lr}, "
                             f"learning_rate={self.learning_rate}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("betas must lie in [0, 1) and weight_decay, grad_clip be >= 0 (grad_clip 0 = no clipping), "
                             f"got betas=({self.beta1}, {self.beta2}), weight_decay={self.weight_decay}, "
                             f"grad_clip={self.grad_clip}")

    def lr_at(self, it: int) -> float:
        """Linear warm-up, then cosine decay from ``learning_rate`` to ``min_lr`` at ``max_iters``."""
        return warmup_schedule(it, self.max_iters, self.learning_rate, self.warmup_iters, self.min_lr, "cosine")


#: ``tiny`` runs in a few CPU minutes; ``full`` is nanoGPT's shakespeare_char schedule.
LM_TRAIN_TINY = LMTrainConfig()
LM_TRAIN_FULL = LMTrainConfig(max_iters=5000, batch_size=64, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
                              eval_interval=500, eval_iters=200)


@torch.no_grad()
def estimate_loss(model: nn.Module, splits: TokenSplits, block_size: int, batch_size: int, eval_iters: int,
                  generator: torch.Generator, device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean loss over ``eval_iters`` random batches of each split (cheap, noisy: for curves)."""
    if isinstance(eval_iters, bool) or not isinstance(eval_iters, int) or eval_iters <= 0:
        raise ValueError(f"eval_iters must be a positive number of batches per split, got {eval_iters!r}")
    out = {}
    with eval_mode(model):
        for name in ("train", "val"):
            losses = [model(*get_batch(splits.split(name), block_size, batch_size, generator, device))[1].item()
                      for _ in range(eval_iters)]
            out[name] = sum(losses) / len(losses)
    return out


@torch.no_grad()
def evaluate_loss(model: nn.Module, data: torch.Tensor, block_size: int, batch_size: int = 64,
                  device: torch.device | str = "cpu") -> float:
    """Exact mean next-token loss over every non-overlapping window of ``data`` (for reported figures)."""
    if not isinstance(data, torch.Tensor) or data.dim() != 1 or data.is_floating_point():
        raise ValueError(f"data must be a 1-D tensor of token ids (e.g. splits.val), got "
                         f"{getattr(data, 'dtype', type(data))} of shape {tuple(getattr(data, 'shape', ()))}")
    if len(data) <= block_size:
        raise ValueError(f"evaluating windows of block_size={block_size} needs more than {block_size} tokens, got "
                         f"{len(data)}; pass a longer split")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    x, y = sequential_windows(data, block_size)  # (N, T) each
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            _, loss = model(xb, yb)
            total += loss.item() * yb.numel()
            count += yb.numel()
    return total / count


def perplexity(loss: float) -> float:
    """exp(loss): the effective number of equally likely next tokens."""
    if not isinstance(loss, (int, float)) or not math.isfinite(loss) or loss < 0:
        raise ValueError(f"perplexity needs a finite cross-entropy >= 0 in nats, got {loss!r}; a NaN or inf loss "
                         "means training diverged: lower the learning rate or check the data")
    if loss > 700:
        raise ValueError(f"a loss of {loss} nats overflows exp(); it is not a language model's loss: check the units")
    return math.exp(loss)


@dataclass
class TrainHistory:
    iters: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # estimated at eval points
    val_loss: list[float] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)  # every iteration
    extra: list[dict[str, float]] = field(default_factory=list)  # eval_callback results at eval points
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time, all threads: depends on the machine and its load
    tokens_seen: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.wall_seconds if self.wall_seconds else float("nan")


def _random_batches(data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator,
                    device: torch.device | str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield get_batch(data, block_size, batch_size, generator, device)


def train_lm(model: nn.Module, splits: TokenSplits, cfg: LMTrainConfig, device: torch.device | str = "cpu",
             tracker: Tracker | None = None, progress: bool = True,
             eval_callback: Callable[[int, nn.Module], dict[str, float]] | None = None) -> TrainHistory:
    """Train ``model`` (returning ``(logits, loss)`` from ``model(x, y)``) on next-token prediction.

    The loss ``model(x, y)`` returns is what is minimised, so a model may add auxiliary terms to it
    (chapter 2's load-balancing loss). At every evaluation point ``eval_callback(iteration, model)`` may
    return extra metrics (e.g. per-expert load); they are kept in ``history.extra`` and logged to mlflow.
    """
    if not isinstance(cfg, LMTrainConfig):
        raise TypeError(f"cfg must be an LMTrainConfig, got {type(cfg).__name__}; use LM_TRAIN_TINY, LM_TRAIN_FULL or "
                        "LMTrainConfig(...)")
    if not isinstance(splits, TokenSplits):
        raise TypeError(f"splits must be a TokenSplits, got {type(splits).__name__}; make it with "
                        "TokenSplits.from_tokens(tokenizer.encode(text))")
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    if block_size is None:
        raise TypeError(f"train_lm needs a language model with config.block_size (GPT, MoELM), got {type(model).__name__}")
    if min(len(splits.train), len(splits.val)) <= block_size:
        raise ValueError(f"each split needs more than block_size={block_size} tokens, got train {len(splits.train)} and "
                         f"val {len(splits.val)}; use more text or a smaller block_size")
    gen_train = torch.Generator().manual_seed(cfg.seed)
    gen_eval = torch.Generator().manual_seed(cfg.seed + 1)
    optimizer = make_adamw(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2), decay="matrices")
    history = TrainHistory()
    tracker = tracker or Tracker(None)
    tracker.log_params({f"train.{k}": v for k, v in asdict(cfg).items()})
    postfix: dict[str, str] = {}

    def backward(batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        x, y = batch
        _, loss = model(x, y)
        loss.backward()
        return StepOutput(loss.item(), examples=x.size(0), tokens=x.numel())

    def evaluate(step: int, log) -> None:
        it = step + 1
        if it % cfg.eval_interval and it != cfg.max_iters:
            return
        losses = estimate_loss(model, splits, block_size, cfg.batch_size, cfg.eval_iters, gen_eval, device)
        history.iters.append(it)
        history.train_loss.append(losses["train"])
        history.val_loss.append(losses["val"])
        metrics = {"train_loss": losses["train"], "val_loss": losses["val"], "lr": log.lr[-1]}
        if eval_callback is not None:
            extra = eval_callback(it, model)
            history.extra.append(extra)
            metrics.update(extra)
        tracker.log_metrics(metrics, step=it)
        postfix.update(train=f"{losses['train']:.3f}", val=f"{losses['val']:.3f}")

    log = train_steps(model, optimizer, _random_batches(splits.train, block_size, cfg.batch_size, gen_train, device),
                      backward, steps=cfg.max_iters, lr_at=cfg.lr_at,
                      grad_clip=cfg.grad_clip if cfg.grad_clip > 0 else None, tracker=None, on_step=evaluate,
                      postfix=lambda _: postfix, progress=progress, desc="training", mininterval=10.0)
    history.batch_loss = log.loss
    history.tokens_seen = log.tokens
    history.wall_seconds, history.cpu_seconds = log.wall_seconds, log.cpu_seconds
    tracker.log_metrics({"wall_seconds": history.wall_seconds, "cpu_seconds": history.cpu_seconds,
                         "tokens_per_second": history.tokens_per_second})
    return history
