"""Chapter 3 — LoRA versus full fine-tuning.

Low-rank adapters for linear (``nn.Linear`` and GPT-2's ``Conv1D``) and embedding layers (weight names as in
``peft``), rank-stabilised scaling, injection into a whole model, merging (with a NaN/inf check), several adapters on
one base and per-row adapters in one batch, adapter files in safetensors; the classifier fine-tuning loop and the
seeded sweep that compare LoRA with full fine-tuning; the SVD analysis of a full fine-tune's update; and LoRA
versus full fine-tuning of a decoder on a structured-output generation task.

Modules: :mod:`~minillm.lora.config`, :mod:`~minillm.lora.layers`, :mod:`~minillm.lora.embedding`,
:mod:`~minillm.lora.model`, :mod:`~minillm.lora.mixed_batch`, :mod:`~minillm.lora.adapters`,
:mod:`~minillm.lora.finetune`, :mod:`~minillm.lora.pooling`, :mod:`~minillm.lora.sweep`,
:mod:`~minillm.lora.lowrank`, :mod:`~minillm.lora.decoder`.
"""

from minillm.lora.adapters import adapter_state_dict, load_adapter, save_adapter
from minillm.lora.config import LORA_RECIPE, LoRAConfig
from minillm.lora.decoder import (ASPECTS, DECODER_FINETUNE_FULL, DECODER_FINETUNE_TINY, DecoderFinetuneConfig,
                                  ExactMatch, GenerationExample, GenerationTask, build_generation_task,
                                  collate_generation, exact_match, finetune_causal_lm, meaning_representation)
from minillm.lora.embedding import LoRAEmbedding, ModulesToSave
from minillm.lora.finetune import (CLASSIFIER_FINETUNE_FULL, CLASSIFIER_FINETUNE_TINY, ClassifierFinetuneConfig,
                                   SentimentData, finetune_classifier, prepare_sentiment)
from minillm.lora.layers import BASE_ROW, LoRALayer, LoRALinear
from minillm.lora.lowrank import (SpectrumReport, energy_captured, overlap, spectrum_report, subspace_overlap,
                                  top_singular_vectors, truncate_updates, weight_updates)
from minillm.lora.mixed_batch import adapter_per_row
from minillm.lora.model import (HEAD_NAMES, ParamReport, adapter_modules, delete_adapter, disable_adapters,
                                inject_lora, mark_only_lora_trainable, merge_lora, set_adapter, trainable_report,
                                unmerge_lora)
from minillm.lora.pooling import MeanPoolClassifier
from minillm.lora.sweep import ClassifierSetting, assert_lora_within, best_setting, paired_gap, run_setting

__all__ = [
    "adapter_state_dict", "load_adapter", "save_adapter", "LORA_RECIPE", "LoRAConfig", "LoRAEmbedding",
    "ModulesToSave", "CLASSIFIER_FINETUNE_FULL", "CLASSIFIER_FINETUNE_TINY", "ClassifierFinetuneConfig",
    "SentimentData", "finetune_classifier", "prepare_sentiment", "BASE_ROW", "LoRALayer", "LoRALinear",
    "SpectrumReport", "energy_captured", "overlap", "spectrum_report", "subspace_overlap", "top_singular_vectors",
    "truncate_updates", "weight_updates", "adapter_per_row", "HEAD_NAMES", "ParamReport", "adapter_modules",
    "delete_adapter", "disable_adapters", "inject_lora", "mark_only_lora_trainable", "merge_lora", "set_adapter",
    "trainable_report", "unmerge_lora", "MeanPoolClassifier", "ClassifierSetting", "assert_lora_within",
    "best_setting", "paired_gap", "run_setting", "ASPECTS", "DECODER_FINETUNE_FULL", "DECODER_FINETUNE_TINY",
    "DecoderFinetuneConfig", "ExactMatch", "GenerationExample", "GenerationTask", "build_generation_task",
    "collate_generation", "exact_match", "finetune_causal_lm", "meaning_representation",
]
