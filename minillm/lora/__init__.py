"""Chapter 3 — LoRA versus full fine-tuning.

Low-rank adapters for linear and embedding layers (weight names as in ``peft``), injection into a whole model,
merging, several adapters on one base, adapter files in safetensors, and the classifier fine-tuning loop that
compares LoRA with full fine-tuning.

Modules: :mod:`~minillm.lora.config`, :mod:`~minillm.lora.layers`, :mod:`~minillm.lora.model`,
:mod:`~minillm.lora.adapters`, :mod:`~minillm.lora.finetune`.
"""

from minillm.lora.adapters import adapter_state_dict, load_adapter, save_adapter
from minillm.lora.config import LORA_RECIPE, LoRAConfig
from minillm.lora.finetune import (CLASSIFIER_FINETUNE_FULL, CLASSIFIER_FINETUNE_TINY, ClassifierFinetuneConfig,
                                   SentimentData, finetune_classifier, prepare_sentiment)
from minillm.lora.layers import LoRAEmbedding, LoRALayer, LoRALinear, ModulesToSave
from minillm.lora.model import (HEAD_NAMES, ParamReport, adapter_modules, delete_adapter, disable_adapters,
                                inject_lora, mark_only_lora_trainable, merge_lora, set_adapter, trainable_report,
                                unmerge_lora)

__all__ = [
    "adapter_state_dict", "load_adapter", "save_adapter", "LORA_RECIPE", "LoRAConfig", "CLASSIFIER_FINETUNE_FULL",
    "CLASSIFIER_FINETUNE_TINY", "ClassifierFinetuneConfig", "SentimentData", "finetune_classifier",
    "prepare_sentiment", "LoRAEmbedding", "LoRALayer", "LoRALinear", "ModulesToSave", "HEAD_NAMES", "ParamReport",
    "adapter_modules", "delete_adapter", "disable_adapters", "inject_lora", "mark_only_lora_trainable", "merge_lora",
    "set_adapter", "trainable_report", "unmerge_lora",
]
