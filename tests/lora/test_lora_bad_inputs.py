"""Bad inputs to chapter 3's LoRA package fail early, naming the problem and the fix (the catalogue's LoRA part)."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from bad_inputs import BadInput, cases_param, check_case
from minillm.core.claims import ClaimError, Interval
from minillm.data.sentiment import Example
from minillm.lora import (ClassifierFinetuneConfig, ClassifierSetting, DecoderFinetuneConfig, GenerationExample,
                          LoRAConfig, LoRAEmbedding, LoRALinear, MeanPoolClassifier, ModulesToSave,
                          adapter_per_row, adapter_state_dict, assert_lora_within, best_setting,
                          build_generation_task, collate_generation, delete_adapter, energy_captured,
                          exact_match, finetune_causal_lm, finetune_classifier, inject_lora, load_adapter,
                          mark_only_lora_trainable, meaning_representation, merge_lora, overlap, paired_gap,
                          prepare_sentiment, run_setting, save_adapter, set_adapter, spectrum_report,
                          subspace_overlap, top_singular_vectors, trainable_report, truncate_updates,
                          unmerge_lora, weight_updates)
from minillm.data.text_classification import TokenizedDataset


class Tiny(nn.Module):
    def __init__(self, hidden: int = 8):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.up = nn.Linear(8, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, 2)

    def forward(self, ids):
        return self.classifier(self.norm(self.up(self.embed(ids))).mean(1))


def _adapted(**kwargs) -> Tiny:
    model = Tiny(**kwargs)
    inject_lora(model, LoRAConfig(r=2, alpha=4))
    return model


def _tmp(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix="ch03_bad_")) / name


def _corrupt_file() -> Path:
    path = _tmp("corrupt.safetensors")
    path.write_bytes(b"\x00\x01 this is not a safetensors file")
    return path


def _foreign_file() -> Path:
    path = _tmp("plain.safetensors")
    save_file({"up.weight": torch.zeros(2, 2)}, str(path))
    return path


def _small_adapter_on_big_model():
    path = save_adapter(_adapted(hidden=8), _tmp("a.safetensors"))
    return load_adapter(Tiny(hidden=16), path)


def _nan_adapter():
    model = _adapted()
    with torch.no_grad():
        model.up.lora_B["default"].weight.fill_(float("inf"))
    merge_lora(model, safe_merge=True)


def _merged(model):
    merge_lora(model)
    return model


class _NoEosTokenizer:
    eos_token_id = None


def _frozen_model():
    model = Tiny()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


EX = GenerationExample([1, 2], [3, 4], "x", "y")
RUNS = [{"label": "full-lr1.0e-04", "method": "full", "pooling": "cls", "r": 8, "use_rslora": False, "seed": 0,
         "val_accuracy": 0.7, "test_accuracy": 0.7}]
GAP = Interval(-0.05, -0.07, -0.03, 5, "paired bootstrap")

CASES = [
    BadInput("minillm.lora.LoRAConfig", "rank 0", lambda: LoRAConfig(r=0), ValueError, "positive integer.*r=8"),
    BadInput("minillm.lora.LoRAConfig", "a negative alpha", lambda: LoRAConfig(alpha=-16), ValueError,
             "alpha must be a positive.*alpha=16"),
    BadInput("minillm.lora.LoRAConfig", "dropout 1.0", lambda: LoRAConfig(dropout=1.0), ValueError, r"\[0, 1\)"),
    BadInput("minillm.lora.LoRAConfig", "a single target name as a string",
             lambda: LoRAConfig(target_modules="query"), ValueError, "'all-linear' or a tuple of names"),
    BadInput("minillm.lora.LoRAConfig", "modules_to_save as a string",
             lambda: LoRAConfig(modules_to_save="classifier"), ValueError, r"tuple of names.*\('classifier',\)"),
    BadInput("minillm.lora.LoRALinear", "wrapping an embedding", lambda: LoRALinear(nn.Embedding(3, 4)), TypeError,
             "nn.Linear or transformers' Conv1D.*use LoRAEmbedding"),
    BadInput("minillm.lora.LoRALinear", "an input of the wrong width",
             lambda: _adapted().up(torch.randn(2, 5)), ValueError, "last dimension 8"),
    BadInput("minillm.lora.LoRALinear", "the reserved adapter name __base__",
             lambda: LoRALinear(nn.Linear(2, 2)).add_adapter("__base__", LoRAConfig()), ValueError,
             "reserved.*pick another name"),
    BadInput("minillm.lora.LoRALayer", "switching to an adapter the layer does not have",
             lambda: _adapted().up.set_adapter("other"), KeyError, "no adapter 'other'.*add_adapter"),
    BadInput("minillm.lora.LoRAEmbedding", "wrapping a linear layer", lambda: LoRAEmbedding(nn.Linear(3, 4)),
             TypeError, "nn.Embedding.*use LoRALinear"),
    BadInput("minillm.lora.LoRAEmbedding", "float inputs instead of token ids",
             lambda: _embedding_layer()(torch.randn(2, 3)), TypeError, "integer token ids.*torch.long"),
    BadInput("minillm.lora.ModulesToSave", "a second copy under the same name",
             lambda: _saved_head().add_adapter("default"), ValueError, "already has a copy.*another name"),
    BadInput("minillm.lora.ModulesToSave", "switching to a copy that does not exist",
             lambda: _saved_head().set_adapter("other"), KeyError, "no copy for adapter 'other'.*add_adapter"),
    BadInput("minillm.lora.inject_lora", "target names that match nothing",
             lambda: inject_lora(Tiny(), LoRAConfig(target_modules=("query",))), ValueError,
             "no module matches.*linear layers in this model include"),
    BadInput("minillm.lora.inject_lora", "a LayerNorm as target",
             lambda: inject_lora(Tiny(), LoRAConfig(target_modules=("norm",))), TypeError,
             "LayerNorm.*Remove it from target_modules"),
    BadInput("minillm.lora.inject_lora", "a head to save that the model lacks",
             lambda: inject_lora(Tiny(), LoRAConfig(modules_to_save=("score",))), ValueError,
             "no such module.*modules_to_save=\\(\\)"),
    BadInput("minillm.lora.inject_lora", "the same adapter name twice",
             lambda: inject_lora(_adapted(), LoRAConfig()), ValueError, "already has an adapter named 'default'.*delete_adapter"),
    BadInput("minillm.lora.inject_lora", "a peft config instead of a LoRAConfig",
             lambda: inject_lora(Tiny(), {"r": 8}), TypeError, "must be a LoRAConfig.*LoRAConfig\\(r=8"),
    BadInput("minillm.lora.set_adapter", "an adapter name the model lacks",
             lambda: set_adapter(_adapted(), "other"), KeyError, "no adapter 'other'.*inject_lora.*load_adapter"),
    BadInput("minillm.lora.delete_adapter", "an adapter name the model lacks",
             lambda: delete_adapter(_adapted(), "other"), KeyError, "no adapter 'other' to delete"),
    BadInput("minillm.lora.mark_only_lora_trainable", "a model without adapters",
             lambda: mark_only_lora_trainable(Tiny()), ValueError, "no LoRA adapters.*inject_lora"),
    BadInput("minillm.lora.merge_lora", "a model without LoRA layers", lambda: merge_lora(Tiny()), ValueError,
             "no LoRA layers to merge.*inject_lora"),
    BadInput("minillm.lora.merge_lora", "a safe merge of an adapter holding inf", _nan_adapter, ValueError,
             "NaN or inf.*no weight was changed.*lower learning rate"),
    BadInput("minillm.lora.unmerge_lora", "a model without LoRA layers", lambda: unmerge_lora(Tiny()), ValueError,
             "no LoRA layers to unmerge.*inject_lora"),
    BadInput("minillm.lora.trainable_report", "a tensor instead of a model",
             lambda: trainable_report(torch.zeros(3)), TypeError, "nn.Module"),
    BadInput("minillm.lora.trainable_report", "a module without parameters",
             lambda: trainable_report(nn.ReLU()), ValueError, "no parameters.*pass the model itself"),
    BadInput("minillm.lora.adapter_state_dict", "an adapter the model lacks",
             lambda: adapter_state_dict(Tiny(), "default"), KeyError, "no adapter 'default'.*inject_lora"),
    BadInput("minillm.lora.save_adapter", "a model without that adapter",
             lambda: save_adapter(Tiny(), _tmp("x.safetensors")), KeyError, "no adapter 'default' to save.*inject_lora"),
    BadInput("minillm.lora.load_adapter", "a missing file",
             lambda: load_adapter(Tiny(), _tmp("missing.safetensors")), FileNotFoundError,
             "no adapter file.*save_adapter"),
    BadInput("minillm.lora.load_adapter", "a corrupt file",
             lambda: load_adapter(Tiny(), _corrupt_file()), ValueError, "truncated or corrupt.*save the adapter again"),
    BadInput("minillm.lora.load_adapter", "a safetensors file that is not an adapter",
             lambda: load_adapter(Tiny(), _foreign_file()), ValueError, "no 'lora_config'.*not written by save_adapter"),
    BadInput("minillm.lora.load_adapter", "an adapter trained on a model of another size",
             _small_adapter_on_big_model, ValueError, "the file has shape.*the model"),
    BadInput("minillm.lora.adapter_per_row", "a row naming an adapter the model lacks",
             lambda: adapter_per_row(_adapted(), ["default", "typo"]).__enter__(), ValueError,
             "no adapter\\(s\\) \\['typo'\\].*__base__"),
    BadInput("minillm.lora.adapter_per_row", "one name as a string instead of a list",
             lambda: adapter_per_row(_adapted(), "default").__enter__(), ValueError, "one adapter name per row"),
    BadInput("minillm.lora.adapter_per_row", "a model with merged adapters",
             lambda: adapter_per_row(_merged(_adapted()), ["default"]).__enter__(), RuntimeError,
             "merged.*unmerge_lora"),
    BadInput("minillm.lora.adapter_per_row", "a batch with more rows than names",
             lambda: _mixed_forward(3), ValueError, "names 2 adapters but the batch has 3 rows"),
    BadInput("minillm.lora.energy_captured", "a 3-D tensor", lambda: energy_captured(torch.zeros(2, 3, 4), 1),
             ValueError, "2-D weight update"),
    BadInput("minillm.lora.energy_captured", "an update holding NaN",
             lambda: energy_captured(torch.full((3, 3), float("nan")), 1), ValueError, "NaN or inf.*lower learning rate"),
    BadInput("minillm.lora.energy_captured", "rank 0", lambda: energy_captured(torch.eye(3), 0), ValueError,
             "at least 1"),
    BadInput("minillm.lora.energy_captured", "an all-zero update", lambda: energy_captured(torch.zeros(3, 3), 1),
             ValueError, "exactly zero.*did not change"),
    BadInput("minillm.lora.top_singular_vectors", "k larger than the matrix",
             lambda: top_singular_vectors(torch.eye(3), 5), ValueError, r"k must be in \[1, 3\]"),
    BadInput("minillm.lora.subspace_overlap", "updates of two different layers",
             lambda: subspace_overlap(torch.eye(3), torch.eye(4), 1), ValueError, "compare the same layer"),
    BadInput("minillm.lora.subspace_overlap", "an unknown side",
             lambda: subspace_overlap(torch.eye(3), torch.eye(3), 1, side="up"), ValueError, "'left'.*'right'"),
    BadInput("minillm.lora.overlap", "bases of different shapes",
             lambda: overlap(torch.eye(4)[:, :2], torch.eye(4)[:, :3]), ValueError, "same k of the same layer"),
    BadInput("minillm.lora.spectrum_report", "no updates", lambda: spectrum_report({}, 8), ValueError,
             "no updates.*adapted linear layers"),
    BadInput("minillm.lora.weight_updates", "a layer name the model lacks",
             lambda: weight_updates(Tiny(), Tiny(), ["query"]), ValueError, "no module 'query'.*inject_lora returned"),
    BadInput("minillm.lora.weight_updates", "a LoRA model with its adapter merged",
             lambda: weight_updates(_merged(_adapted()), Tiny(), ["up"]), ValueError, "merged.*unmerge_lora"),
    BadInput("minillm.lora.truncate_updates", "rank 0", lambda: truncate_updates(Tiny(), Tiny(), ["up"], 0),
             ValueError, "at least 1"),
    BadInput("minillm.lora.truncate_updates", "a LoRA model (its update is already low rank)",
             lambda: truncate_updates(_adapted(), Tiny(), ["up"], 1), TypeError, "truncate a full fine-tune"),
    BadInput("minillm.lora.MeanPoolClassifier", "a model without a BERT encoder",
             lambda: MeanPoolClassifier(Tiny()), TypeError, "BertForSequenceClassification.*without .bert"),
    BadInput("minillm.lora.ClassifierFinetuneConfig", "a batch size of 0",
             lambda: ClassifierFinetuneConfig(batch_size=0), ValueError, "batch_size must be a positive"),
    BadInput("minillm.lora.ClassifierFinetuneConfig", "more warm-up steps than steps",
             lambda: ClassifierFinetuneConfig(max_steps=10, warmup_steps=20), ValueError, "warmup_steps must be in"),
    BadInput("minillm.lora.ClassifierFinetuneConfig", "max_length 2 (only [CLS] and [SEP])",
             lambda: ClassifierFinetuneConfig(max_length=2), ValueError, "no room.*at least 3"),
    BadInput("minillm.lora.prepare_sentiment", "an unknown corpus",
             lambda: prepare_sentiment(None, ClassifierFinetuneConfig(corpus="imdb")), ValueError,
             "unknown corpus 'imdb'; choose one of"),
    BadInput("minillm.lora.finetune_classifier", "a model with nothing trainable",
             lambda: finetune_classifier(_frozen_model(), TokenizedDataset([[1, 2]], [0]), ClassifierFinetuneConfig(),
                                         1e-3, progress=False), ValueError, "no trainable parameter.*inject"),
    BadInput("minillm.lora.ClassifierSetting", "an unknown method",
             lambda: ClassifierSetting("qlora", 1e-3), ValueError, "method must be one of"),
    BadInput("minillm.lora.ClassifierSetting", "an unknown pooling", lambda: ClassifierSetting("lora", 1e-3, pooling="max"),
             ValueError, "pooling must be one of"),
    BadInput("minillm.lora.ClassifierSetting", "a learning rate of 0", lambda: ClassifierSetting("full", 0.0),
             ValueError, "learning rate must be positive"),
    BadInput("minillm.lora.run_setting", "a LoRAConfig instead of a ClassifierSetting",
             lambda: run_setting(LoRAConfig(), 0, ClassifierFinetuneConfig(), Tiny(), None), TypeError,
             "ClassifierSetting\\('lora', 1e-3\\)"),
    BadInput("minillm.lora.best_setting", "a method with no runs", lambda: best_setting(RUNS, "lora"), ValueError,
             "no runs of method 'lora'"),
    BadInput("minillm.lora.paired_gap", "settings that share one seed",
             lambda: paired_gap(RUNS, "full-lr1.0e-04", "full-lr1.0e-04"), ValueError, "at least 2"),
    BadInput("minillm.lora.assert_lora_within", "a margin of 0", lambda: assert_lora_within(GAP, 0), ValueError,
             "positive margin"),
    BadInput("minillm.lora.assert_lora_within", "a gap the interval does not support",
             lambda: assert_lora_within(GAP, 2), ClaimError, "does not support the claim 'LoRA is within 2 points"),
    BadInput("minillm.lora.meaning_representation", "a bare string instead of an Example",
             lambda: meaning_representation("a fine film"), TypeError, "Example\\(text, label\\)"),
    BadInput("minillm.lora.GenerationExample", "an empty target",
             lambda: GenerationExample([1], [], "x", ""), ValueError, "non-empty prompt and target.*build_generation_task"),
    BadInput("minillm.lora.DecoderFinetuneConfig", "no training examples",
             lambda: DecoderFinetuneConfig(train_examples=0), ValueError, "train_examples must be a positive"),
    BadInput("minillm.lora.DecoderFinetuneConfig", "more warm-up steps than steps",
             lambda: DecoderFinetuneConfig(max_steps=2, warmup_steps=4), ValueError, "warmup_steps must be in"),
    BadInput("minillm.lora.build_generation_task", "a tokenizer without an end token",
             lambda: build_generation_task(_NoEosTokenizer(), DecoderFinetuneConfig()), ValueError,
             "no eos_token_id.*SmolLM2's tokenizer"),
    BadInput("minillm.lora.collate_generation", "an empty batch", lambda: collate_generation([], 0), ValueError,
             "empty batch"),
    BadInput("minillm.lora.finetune_causal_lm", "fewer examples than one batch",
             lambda: finetune_causal_lm(Tiny(), [EX], DecoderFinetuneConfig(), 1e-4, 0), ValueError,
             "cannot fill one batch.*lower batch_size"),
    BadInput("minillm.lora.exact_match", "an empty split", lambda: exact_match(Tiny(), [], 0), ValueError,
             "no examples.*raise test_examples"),
]


def _embedding_layer():
    layer = LoRAEmbedding(nn.Embedding(10, 4))
    layer.add_adapter("default", LoRAConfig(r=2))
    return layer


def _saved_head():
    head = ModulesToSave(nn.Linear(2, 2))
    head.add_adapter("default")
    return head


def _mixed_forward(rows: int):
    model = _adapted()
    with adapter_per_row(model, ["default", "default"]):
        return model(torch.zeros(rows, 3, dtype=torch.long))


EXEMPT = {
    "minillm.lora.SentimentData": "a frozen container of the three tokenized splits prepare_sentiment builds",
    "minillm.lora.ParamReport": "a frozen pair of counts that trainable_report fills in (it validates its model)",
    "minillm.lora.SpectrumReport": "a frozen record spectrum_report fills in from updates it has checked",
    "minillm.lora.GenerationTask": "a frozen container of the splits build_generation_task builds and checks",
    "minillm.lora.ExactMatch": "a frozen result exact_match fills in; it takes no input of its own",
    "minillm.lora.adapter_modules": "lists the adapter modules there are; for a model without adapters an empty "
                                    "list is the right answer, not an error",
    "minillm.lora.disable_adapters": "a context that switches adapters off; on a model without adapters running "
                                     "the bare model is exactly what was asked",
}


@cases_param(CASES)
def test_bad_input_is_rejected_clearly(case):
    check_case(case)
