r"""A fair comparison of LoRA with full fine-tuning: one run per (setting, seed), best setting on validation,
and the headline judged on a paired interval over seeds.

A *setting* is a method (``"full"`` or ``"lora"``), a peak learning rate and, for LoRA, the rank, :math:`\alpha`
and the scale rule (:math:`\alpha/r` or rank-stabilised :math:`\alpha/\sqrt r`); the classifier head reads
``[CLS]`` through BERT's pooler or the mean state (:mod:`minillm.lora.pooling`). A *seed* replicates the whole
experiment: the train/validation/test split, the new head's initialisation, LoRA's :math:`A`, dropout and the batch
order. Each method is represented by the setting with the best **mean validation accuracy** over seeds; the two are
then compared on the **test** set, seed by seed:

.. math::

    d_i = \mathrm{acc}^{\text{test}}_{\text{LoRA}}(i) - \mathrm{acc}^{\text{test}}_{\text{full}}(i), \qquad
    \text{claim: the 95\% paired-bootstrap interval of } \bar d \text{ lies above } -X .

Defined in chapter 3.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from minillm.core.claims import Interval, assert_claim, paired_difference
from minillm.data.text_classification import evaluate_text_classifier
from minillm.lora.config import LORA_RECIPE, LoRAConfig
from minillm.lora.finetune import ClassifierFinetuneConfig, finetune_classifier, prepare_sentiment
from minillm.lora.model import inject_lora, trainable_report
from minillm.lora.pooling import MeanPoolClassifier

METHODS = ("full", "lora")
POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class ClassifierSetting:
    """One point of the sweep: method, peak learning rate, LoRA's rank / alpha / scale rule, and the head."""

    method: str
    lr: float
    r: int = LORA_RECIPE.r
    alpha: float = LORA_RECIPE.alpha
    use_rslora: bool = False
    pooling: str = "cls"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")

    @property
    def label(self) -> str:
        """A short unique name, e.g. ``lora-r8-a16-lr1.0e-03`` or ``full-lr1.0e-04-mean``."""
        name = f"full-lr{self.lr:.1e}" if self.method == "full" else (
            f"lora-r{self.r}-a{self.alpha:g}{'-rs' if self.use_rslora else ''}-lr{self.lr:.1e}")
        return name + ("-mean" if self.pooling == "mean" else "")

    def lora_config(self) -> LoRAConfig:
        return dataclasses.replace(LORA_RECIPE, r=self.r, alpha=self.alpha, use_rslora=self.use_rslora)

    def build(self, base_model: nn.Module, seed: int) -> nn.Module:
        """A fresh copy of ``base_model`` prepared for this setting (LoRA's A drawn from ``seed``)."""
        model = copy.deepcopy(base_model)
        if self.pooling == "mean":
            model = MeanPoolClassifier(model)
        if self.method == "lora":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                inject_lora(model, self.lora_config())
        return model


def run_setting(setting: ClassifierSetting, seed: int, cfg: ClassifierFinetuneConfig, base_model: nn.Module,
                tokenizer, device: torch.device | str = "cpu", keep_model: bool = False) -> dict:
    """Fine-tune one setting with one seed; validation and test accuracy, the training curve's summary.

    ``base_model`` must be the pretrained classifier whose head was drawn from ``seed``
    (``load_minilm_classifier(seed=seed)``). With ``keep_model`` the trained model is returned under ``"model"``.
    """
    if not isinstance(setting, ClassifierSetting):
        raise TypeError(f"setting must be a ClassifierSetting, got {type(setting).__name__}; "
                        f"e.g. ClassifierSetting('lora', 1e-3)")
    cfg = dataclasses.replace(cfg, seed=seed)
    data = prepare_sentiment(tokenizer, cfg)
    model = setting.build(base_model, seed)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        log = finetune_classifier(model, data.train, cfg, setting.lr, device, progress=False)
    val, test = evaluate_text_classifier(model, data.val), evaluate_text_classifier(model, data.test)
    report = trainable_report(model)
    out = {"label": setting.label, **dataclasses.asdict(setting), "seed": seed,
           "val_accuracy": val.accuracy, "test_accuracy": test.accuracy,
           "test_correct": "".join("1" if c else "0" for c in test.correct.tolist()),
           "first_loss": log.loss[0], "final_loss": statistics.fmean(log.loss[-5:]), "max_loss": max(log.loss),
           "max_grad_norm": max(log.grad_norm), "trainable": report.trainable, "total": report.total,
           "steps": log.steps, "examples_per_s": log.examples_per_second,
           "wall_s": time.perf_counter() - start_wall, "cpu_s": time.process_time() - start_cpu}
    if keep_model:
        out["model"] = model
        out["data"] = data
    return out


def mean_by_label(runs: Sequence[dict], key: str) -> dict[str, float]:
    """Mean of ``key`` over seeds, per setting label."""
    values: dict[str, list[float]] = {}
    for run in runs:
        values.setdefault(run["label"], []).append(run[key])
    return {label: statistics.fmean(v) for label, v in values.items()}


def best_setting(runs: Sequence[dict], method: str, pooling: str = "cls", r: int | None = None,
                 use_rslora: bool | None = None) -> str:
    """The label with the highest mean validation accuracy among ``method``'s runs (optionally one rank / rule)."""
    chosen = [run for run in runs if run["method"] == method and run["pooling"] == pooling
              and (r is None or run["r"] == r) and (use_rslora is None or run["use_rslora"] == use_rslora)]
    if not chosen:
        raise ValueError(f"no runs of method {method!r} (pooling {pooling!r}, r={r}, rsLoRA={use_rslora}) to choose from")
    val = mean_by_label(chosen, "val_accuracy")
    return max(val, key=val.get)


def paired_gap(runs: Sequence[dict], label_a: str, label_b: str, key: str = "test_accuracy") -> Interval:
    """Paired bootstrap interval of ``key``(a) − ``key``(b) over the seeds both settings ran with."""
    a = {run["seed"]: run[key] for run in runs if run["label"] == label_a}
    b = {run["seed"]: run[key] for run in runs if run["label"] == label_b}
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ValueError(f"{label_a!r} and {label_b!r} share {len(seeds)} seed(s); a paired interval needs at least 2")
    return paired_difference([a[s] for s in seeds], [b[s] for s in seeds])


def assert_lora_within(gap: Interval, points: float) -> Interval:
    """The headline: LoRA's test accuracy is at most ``points`` percentage points below full fine-tuning's
    (the whole interval of LoRA − full lies above ``-points / 100``). Raises ``ClaimError`` otherwise."""
    if not points > 0:
        raise ValueError(f"points must be a positive margin in percentage points, got {points}")
    return assert_claim(gap, f"LoRA is within {points:g} points of full fine-tuning", above=-points / 100)
