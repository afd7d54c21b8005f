r"""LoRA versus full fine-tuning of a decoder (SmolLM2-135M) on a structured-output generation task.

**The task.** Each Pang & Lee review sentence is mapped to a short meaning representation in the style of the
ViGGO data set the Anyscale study used:

.. code-block:: text

    Review: a well-acted, funny and touching film.
    Meaning: review(sentiment[positive], aspects[acting, humor])

``sentiment`` is the corpus's label; ``aspects`` is what a fixed keyword list (:data:`ASPECTS`, written for this
course) finds in the sentence, in that list's order, or ``none``. So the model must learn a format, a keyword
mapping and the sentiment judgement — the last is the hard part.

**Training** minimises the cross-entropy of the target tokens only (the prompt's labels are masked),
through the shared step loop; **exact match** is the share of test examples whose whole target (and the
end-of-turn token after it) the model reproduces. We compute it with one teacher-forced pass,

.. math::

    \mathrm{EM}(x, y) = \prod_{t=1}^{|y|} \mathbb{1}\big[\arg\max_v p_\theta(v \mid x, y_{<t}) = y_t\big],

which is exactly whether greedy decoding would generate :math:`y` token for token (greedy decoding feeds back its
own argmax, so it stays on :math:`y` precisely while every argmax equals :math:`y_t`); the tests check it against
``generate``.

Defined in chapter 3.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, Iterator, Sequence

import torch
from torch import nn

from minillm.core.evaluation import eval_mode
from minillm.core.training import StepOutput, TrainLog, make_adamw, train_steps, warmup_schedule
from minillm.data.sentiment import Example, load_sentiment_splits

#: Aspect -> the words that mark it (lower case, whole words). Order fixes the order of the output list.
ASPECTS: dict[str, tuple[str, ...]] = {
    "acting": ("actor", "actors", "actress", "acting", "performance", "performances", "cast"),
    "story": ("plot", "story", "script", "screenplay", "writing", "dialogue"),
    "direction": ("director", "directed", "direction", "filmmaker", "filmmakers"),
    "humor": ("funny", "comedy", "humor", "humour", "laughs", "jokes", "comic"),
    "music": ("music", "soundtrack", "songs", "song"),
    "visuals": ("visual", "visually", "visuals", "cinematography", "camera", "images"),
}
PROMPT = "Review: {text}\nMeaning:"


def meaning_representation(example: Example) -> str:
    """The target string, e.g. ``review(sentiment[negative], aspects[story])``."""
    if not isinstance(example, Example):
        raise TypeError(f"meaning_representation takes a labelled Example(text, label), got {type(example).__name__}; "
                        f"wrap the text: Example(text, label)")
    words = set(re.findall(r"[a-z]+", example.text.lower()))
    found = [aspect for aspect, keys in ASPECTS.items() if words & set(keys)]
    sentiment = ("negative", "positive")[example.label]
    return f"review(sentiment[{sentiment}], aspects[{', '.join(found) or 'none'}])"


@dataclass(frozen=True)
class GenerationExample:
    """Token ids of the prompt and of the target (the target ends with the end-of-turn token)."""

    prompt_ids: list[int]
    target_ids: list[int]
    text: str
    target: str

    def __post_init__(self):
        if not self.prompt_ids or not self.target_ids:
            raise ValueError("a generation example needs a non-empty prompt and target (the target ends with the "
                             "end token); build examples with build_generation_task")


@dataclass(frozen=True)
class DecoderFinetuneConfig:
    max_length: int = 40        # prompt + target tokens; longer sentences are left out (counted)
    train_examples: int = 240   # one pass at 30 steps of 8
    val_examples: int = 32
    test_examples: int = 128
    batch_size: int = 8
    max_steps: int = 30
    warmup_steps: int = 3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0

    SMOKE_CAPS: ClassVar[dict[str, int]] = {"train_examples": 16, "val_examples": 4, "test_examples": 4,
                                            "max_steps": 1, "warmup_steps": 1}

    def __post_init__(self):
        for name in ("batch_size", "max_steps", "max_length", "train_examples", "val_examples", "test_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}")

    def lr_at(self, step: int, peak: float) -> float:
        return warmup_schedule(step, self.max_steps, peak, self.warmup_steps, 0.0, "linear")


#: ``tiny``: 30 steps of 8 sentences (short ones: at most 40 tokens with the target), sized for a shared CPU;
#: ``full``: 250 steps of 16 over up to 64 tokens, evaluated on 800 test sentences — meant for a GPU.
DECODER_FINETUNE_TINY = DecoderFinetuneConfig()
DECODER_FINETUNE_FULL = DecoderFinetuneConfig(max_length=64, train_examples=2800, val_examples=200, test_examples=800,
                                              batch_size=16, max_steps=250, warmup_steps=25)


@dataclass(frozen=True)
class GenerationTask:
    train: list[GenerationExample]
    val: list[GenerationExample]
    test: list[GenerationExample]
    dropped: int  # sentences longer than max_length, left out


def _encode(tokenizer, example: Example) -> GenerationExample:
    target = meaning_representation(example)
    prompt_ids = tokenizer(PROMPT.format(text=example.text), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(" " + target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return GenerationExample(prompt_ids, target_ids, example.text, target)


def build_generation_task(tokenizer, cfg: DecoderFinetuneConfig) -> GenerationTask:
    """Seeded splits of the sentence corpus (:func:`minillm.data.sentiment.load_sentiment_splits`), encoded,
    sentences over ``cfg.max_length`` tokens left out, cut to the config's sizes."""
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError("the tokenizer has no eos_token_id: the target needs an end token; use SmolLM2's tokenizer")
    splits = load_sentiment_splits("sentences", seed=cfg.seed)
    out, dropped = [], 0
    for split, n in ((splits.train, cfg.train_examples), (splits.val, cfg.val_examples), (splits.test, cfg.test_examples)):
        kept = []
        for example in split:
            if len(kept) == n:
                break
            encoded = _encode(tokenizer, example)
            if len(encoded.prompt_ids) + len(encoded.target_ids) <= cfg.max_length:
                kept.append(encoded)
            else:
                dropped += 1
        out.append(kept)
    return GenerationTask(*out, dropped=dropped)


def collate_generation(examples: Sequence[GenerationExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on the prompt and the padding)."""
    if not examples:
        raise ValueError("an empty batch: pass at least one example")
    length = max(len(e.prompt_ids) + len(e.target_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(examples):
        seq = e.prompt_ids + e.target_ids
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, len(e.prompt_ids):len(seq)] = torch.tensor(e.target_ids)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _batches(examples: list[GenerationExample], batch_size: int, pad_id: int, seed: int) -> Iterator[dict]:
    epoch = 0
    while True:  # a fresh seeded shuffle every epoch
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield collate_generation([examples[j] for j in order[i:i + batch_size]], pad_id)
        epoch += 1


def finetune_causal_lm(model: nn.Module, train: list[GenerationExample], cfg: DecoderFinetuneConfig, lr: float,
                       pad_id: int, device: torch.device | str = "cpu", progress: bool = True) -> TrainLog:
    """Fine-tune a causal LM on the target tokens for ``cfg.max_steps`` steps at peak ``lr`` (AdamW over whatever
    requires gradients: everything for full fine-tuning, the adapters after ``inject_lora``)."""
    if len(train) < cfg.batch_size:
        raise ValueError(f"{len(train)} training examples cannot fill one batch of {cfg.batch_size}; "
                         f"lower batch_size or raise train_examples / max_length")
    model.to(device)
    optimizer = make_adamw(model, lr, cfg.weight_decay, decay="matrices", fused=True)

    def backward(batch: dict[str, torch.Tensor]) -> StepOutput:
        batch = {k: v.to(device) for k, v in batch.items()}  # (B, T) each
        loss = model(**batch).loss  # mean over the target tokens
        loss.backward()
        return StepOutput(loss.item(), examples=len(batch["input_ids"]), tokens=int(batch["attention_mask"].sum()))

    return train_steps(model, optimizer, _batches(train, cfg.batch_size, pad_id, cfg.seed), backward,
                       steps=cfg.max_steps, lr_at=lambda step: cfg.lr_at(step, lr),
                       grad_clip=cfg.grad_clip if cfg.grad_clip > 0 else math.inf,
                       postfix=lambda log: {"loss": f"{log.loss[-1]:.3f}"}, progress=progress,
                       desc=f"fine-tuning the decoder (lr={lr:g})", mininterval=5.0)


@dataclass(frozen=True)
class ExactMatch:
    """Exact-match rate, per-example hits (data order) and the mean target-token loss."""

    accuracy: float
    correct: torch.Tensor
    loss: float

    @property
    def n(self) -> int:
        return int(self.correct.numel())


@torch.no_grad()
def exact_match(model: nn.Module, examples: list[GenerationExample], pad_id: int, batch_size: int = 32) -> ExactMatch:
    """Whether greedy decoding reproduces each target exactly, from one teacher-forced pass per batch."""
    if not examples:
        raise ValueError("no examples to evaluate: the split is empty (raise test_examples or max_length)")
    device = next(model.parameters()).device
    hits, total_loss, total_tokens = [], 0.0, 0
    with eval_mode(model):
        for i in range(0, len(examples), batch_size):
            batch = collate_generation(examples[i:i + batch_size], pad_id)
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits.float()  # (B, T, V)
            predicted = logits[:, :-1].argmax(-1).cpu()  # position t predicts token t + 1
            labels = batch["labels"][:, 1:]  # (B, T - 1)
            scored = labels != -100
            hits.append(((predicted == labels) | ~scored).all(-1))
            total_loss += float(torch.nn.functional.cross_entropy(logits[:, :-1][scored.to(device)],
                                                                  labels[scored].to(device), reduction="sum"))
            total_tokens += int(scored.sum())
    correct = torch.cat(hits)
    return ExactMatch(float(correct.float().mean()), correct, total_loss / total_tokens)

