"""Fine-tuning a sentiment classifier with and without gradient accumulation, and what each costs.

Chapter 4 compares three ways to train on the same examples in the same order:

* batch size 1 — one optimizer step per example (noisy updates, smallest memory);
* micro-batch 1 × accumulation 16 — the *gradient* of batch 16 at the *memory* of batch 1;
* batch size 16 — the reference the accumulated run must match, when memory allows.

Memory is measured, not estimated: on CUDA with ``torch.cuda.max_memory_allocated`` around a training
step; on any device, :func:`saved_activation_bytes` counts what autograd keeps for the backward pass
(the part that grows with the micro-batch), and :func:`training_state_bytes` counts parameters,
gradients and AdamW's two moments (the part that does not).

The original experiment fine-tunes ``bigscience/bloom-560m``; :func:`bloom_classifier` keeps that
code path for readers online and builds the same ``BloomForSequenceClassification`` class from a small
``BloomConfig`` offline. Accuracy results use the pretrained MiniLM encoder (:mod:`minillm.pretrained`).

Defined in chapter 4 (gradient accumulation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from minillm.accumulation import TrainLog, summed_loss, train_accumulated
from minillm.lora_finetune import make_adamw
from minillm.pretrained import PretrainedModelMissing, load_minilm_classifier, make_loader, tokenize_examples
from minillm.profile import current_profile
from minillm.sentiment import load_sentiment_splits

BLOOM_NAME = "bigscience/bloom-560m"


@dataclass(frozen=True)
class FinetuneConfig:
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


#: tiny: every layer trains (a full fine-tune, as in the reference experiment) on 1,024 short sentences, tested on
#: the whole 800-sentence test split; full: the whole training split, two epochs, bfloat16 autocast, compile.
TINY = FinetuneConfig(train_size=1024, test_size=None, max_length=32, epochs=1)
FULL = FinetuneConfig(max_length=64, epochs=2, amp=True, compile=True)


def default_config() -> FinetuneConfig:
    """The tiny preset on the tiny profile, the full one (whole data, AMP, compile) otherwise."""
    return current_profile().pick(TINY, FULL)


def bloom_classifier(pretrained: bool = False, num_labels: int = 2, seed: int = 0, **config_overrides):
    """A ``BloomForSequenceClassification``: BLOOM-560m's weights (needs the hub) or a small random one.

    The small one has BLOOM's architecture (ALiBi attention, pre-LayerNorm, last-token pooling) at
    2 layers × 64 dims, enough to test accumulation offline.

    Raises:
        PretrainedModelMissing: when ``pretrained=True`` and the weights cannot be fetched.
    """
    from transformers import BloomConfig, BloomForSequenceClassification

    if pretrained:
        try:
            return BloomForSequenceClassification.from_pretrained(BLOOM_NAME, num_labels=num_labels)
        except OSError as err:
            raise PretrainedModelMissing(
                f"{BLOOM_NAME} is not in the local cache and the hub is unreachable or disabled "
                f"(HF_HUB_OFFLINE=1). Online, run with HF_HUB_OFFLINE=0; offline, use pretrained=False. ({err})"
            ) from None
    settings = dict(vocab_size=512, hidden_size=64, n_layer=2, n_head=4, pad_token_id=0, hidden_dropout=0.0,
                    attention_dropout=0.0, num_labels=num_labels)
    settings.update(config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return BloomForSequenceClassification(BloomConfig(**settings))


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


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, loader, num_classes: int = 2) -> float:
    """Test accuracy computed with ``torchmetrics`` (micro-averaged over all examples)."""
    from torchmetrics.classification import MulticlassAccuracy

    device = next(model.parameters()).device
    metric = MulticlassAccuracy(num_classes=num_classes, average="micro").to(device)
    was_training = model.training
    model.eval()
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, C)
        metric.update(logits.argmax(-1), batch["labels"])
    model.train(was_training)
    return float(metric.compute())


def _is_parameter_copy(t: torch.Tensor) -> bool:
    # Autocast saves a low-precision copy of each weight it multiplies: weights, not activations.
    fn = t.grad_fn
    return (fn is not None and type(fn).__name__ == "ToCopyBackward0"
            and all(type(f).__name__ == "AccumulateGrad" for f, _ in fn.next_functions if f is not None))


def saved_activation_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor], unit: str = "examples") -> int:
    """Bytes of the tensors autograd saves for backward during one forward pass (parameters excluded).

    Each storage is counted once (views share it); the reduced-precision weight copies autocast makes are not
    activations and are left out. This is the memory that scales with the micro-batch.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and not _is_parameter_copy(t):
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = summed_loss(model, batch, unit)
    del loss
    return sum(saved.values())


def training_state_bytes(model: torch.nn.Module) -> int:
    """Parameters + gradients of trainable ones + AdamW's two moments: memory independent of batch size."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return total + 3 * trainable


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


def run_finetune(name: str, micro_batch_size: int, accumulation_steps: int, cfg: FinetuneConfig,
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
    test_loader = make_loader(test, 64, pad_id=pad)
    amp_dtype = torch.bfloat16 if cfg.amp else None
    probe = {k: v.to(device) for k, v in next(iter(make_loader(train, micro_batch_size, pad_id=pad))).items()}
    model.train()  # dropout masks are saved for backward too: measure the training forward pass
    activations = saved_activation_bytes(model, probe)
    trained = torch.compile(model) if cfg.compile else model
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay, decay_all=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(cfg.seed)  # dropout masks repeat across schemes
    log: TrainLog = train_accumulated(trained, train_loader, optimizer, accumulation_steps, epochs=cfg.epochs,
                                      autocast_dtype=amp_dtype, tracker=tracker, progress=progress, desc=name)
    cuda_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    accuracy = evaluate_accuracy(model, test_loader)
    if tracker is not None:
        tracker.log_metrics({"test_accuracy": accuracy, "activation_bytes": activations})
    return RunResult(name, micro_batch_size, accumulation_steps, log.step_losses, accuracy, log.seconds,
                     activations, training_state_bytes(model), cuda_peak)
