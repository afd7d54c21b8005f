r"""A small language-model training loop: AdamW, warmup + cosine learning rate, periodic evaluation.

The learning rate at iteration t (warmup :math:`t_w`, total :math:`t_{max}`):

.. math::

    \eta_t = \begin{cases} \eta_{max}\,\frac{t+1}{t_w} & t < t_w \\
    \eta_{min} + \tfrac12(\eta_{max}-\eta_{min})\left(1+\cos\pi\frac{t-t_w}{t_{max}-t_w}\right) & t \ge t_w \end{cases}

Loss is reported in nats per token; perplexity is :math:`e^{\mathcal{L}}`.

Defined in the foundation (chapter 1); chapter 2 trains its MoE language model with it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from minillm.batching import TokenSplits, get_batch, sequential_windows
from minillm.profile import Profile, current_profile
from minillm.tracking import Tracker


@dataclass(frozen=True)
class TrainConfig:
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


#: ``tiny`` runs in a few CPU minutes; ``full`` is nanoGPT's shakespeare_char schedule.
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(),
    "full": TrainConfig(max_iters=5000, batch_size=64, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
                        eval_interval=500, eval_iters=200),
}


def train_config_for_profile(profile: Profile | None = None) -> TrainConfig:
    profile = profile or current_profile()
    return TRAIN_PRESETS[profile.name]


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay from ``learning_rate`` to ``min_lr`` at ``max_iters``."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (cfg.learning_rate - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW that decays matrices only: biases and LayerNorm gains are not pulled towards zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))


@torch.no_grad()
def estimate_loss(model, splits: TokenSplits, block_size: int, batch_size: int, eval_iters: int,
                  generator: torch.Generator, device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean loss over ``eval_iters`` random batches of each split (cheap, noisy: for curves)."""
    was_training = model.training
    model.eval()
    out = {}
    for name in ("train", "val"):
        losses = [model(*get_batch(splits.split(name), block_size, batch_size, generator, device))[1].item()
                  for _ in range(eval_iters)]
        out[name] = sum(losses) / len(losses)
    model.train(was_training)
    return out


@torch.no_grad()
def evaluate_loss(model, data: torch.Tensor, block_size: int, batch_size: int = 64,
                  device: torch.device | str = "cpu") -> float:
    """Exact mean next-token loss over every non-overlapping window of ``data`` (for reported figures)."""
    was_training = model.training
    model.eval()
    x, y = sequential_windows(data, block_size)  # (N, T) each
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        _, loss = model(xb, yb)
        total += loss.item() * yb.numel()
        count += yb.numel()
    model.train(was_training)
    return total / count


def perplexity(loss: float) -> float:
    """exp(loss): the effective number of equally likely next tokens."""
    return math.exp(loss)


@dataclass
class TrainHistory:
    iters: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # estimated at eval points
    val_loss: list[float] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)  # every iteration
    extra: list[dict[str, float]] = field(default_factory=list)  # eval_callback results at eval points
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0  # process CPU time, all threads
    tokens_seen: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.wall_seconds if self.wall_seconds else float("nan")


def train_lm(model, splits: TokenSplits, cfg: TrainConfig, device: torch.device | str = "cpu",
             tracker: Tracker | None = None, progress: bool = True,
             eval_callback: Callable[[int, torch.nn.Module], dict[str, float]] | None = None) -> TrainHistory:
    """Train ``model`` (returning ``(logits, loss)`` from ``model(x, y)``) on next-token prediction.

    The loss ``model(x, y)`` returns is what is minimised, so a model may add auxiliary terms to it
    (chapter 2's load-balancing loss). At every evaluation point ``eval_callback(iteration, model)`` may
    return extra metrics (e.g. per-expert load); they are kept in ``history.extra`` and logged to mlflow.
    """
    block_size = model.config.block_size
    gen_train = torch.Generator().manual_seed(cfg.seed)
    gen_eval = torch.Generator().manual_seed(cfg.seed + 1)
    optimizer = make_optimizer(model, cfg)
    history = TrainHistory()
    tracker = tracker or Tracker(None)
    tracker.log_params({f"train.{k}": v for k, v in asdict(cfg).items()})
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(range(cfg.max_iters), desc="training", disable=not progress, mininterval=10.0)
    for it in bar:
        lr = lr_at(it, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(splits.train, block_size, cfg.batch_size, gen_train, device)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        history.batch_loss.append(loss.item())
        history.tokens_seen += x.numel()
        if (it + 1) % cfg.eval_interval == 0 or it + 1 == cfg.max_iters:
            losses = estimate_loss(model, splits, block_size, cfg.batch_size, cfg.eval_iters, gen_eval, device)
            history.iters.append(it + 1)
            history.train_loss.append(losses["train"])
            history.val_loss.append(losses["val"])
            metrics = {"train_loss": losses["train"], "val_loss": losses["val"], "lr": lr}
            if eval_callback is not None:
                extra = eval_callback(it + 1, model)
                history.extra.append(extra)
                metrics.update(extra)
            tracker.log_metrics(metrics, step=it + 1)
            bar.set_postfix(train=f"{losses['train']:.3f}", val=f"{losses['val']:.3f}")
    history.wall_seconds = time.perf_counter() - t0
    history.cpu_seconds = time.process_time() - c0
    tracker.log_metrics({"wall_seconds": history.wall_seconds, "cpu_seconds": history.cpu_seconds,
                         "tokens_per_second": history.tokens_per_second})
    return history
