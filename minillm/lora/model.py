r"""Put LoRA adapters into a whole model: inject, freeze, count, switch, merge, save and load.

:func:`inject_lora` replaces each target ``nn.Linear``/``Conv1D``/``nn.Embedding`` by its LoRA twin
(``"all-linear"`` takes every linear layer except the output head: the LM head or a classifier), wraps ``modules_to_save``
(a fresh classifier head is trained in full), and :func:`mark_only_lora_trainable` freezes the rest, so
the optimizer sees only

.. math::

    |\theta_{train}| = \sum_{\text{adapted } W} r\,(d_{in} + d_{out}) \;+\; |\text{head}|
    \;\ll\; |\theta| .

Several adapters can share one base: :func:`set_adapter` switches, :func:`disable_adapters` runs the bare base
model, :func:`delete_adapter` removes one. Saving and loading adapter files is :mod:`minillm.lora.adapters`.

Defined in chapter 3.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

import torch

from minillm.lora.config import LoRAConfig
from minillm.lora.embedding import LoRAEmbedding, ModulesToSave
from minillm.lora.layers import LoRALayer, LoRALinear, is_linear_like

#: Output heads "all-linear" never adapts (they are trained in full through ``modules_to_save`` instead).
HEAD_NAMES = ("classifier", "score", "lm_head")
_ADAPTER_KEYS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "modules_to_save")
_INTERNAL = {"base_layer", "original_module", *_ADAPTER_KEYS}


def _output_head_names(model: nn.Module) -> set[str]:
    heads = {name for name, _ in model.named_modules() if name.split(".")[-1] in HEAD_NAMES}
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None:
        heads |= {name for name, m in model.named_modules() if m is out}
    return heads


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def inject_lora(model: nn.Module, config: LoRAConfig, adapter_name: str = "default") -> list[str]:
    """Add adapter ``adapter_name`` to every target module of ``model`` (in place); return the adapted names.

    A target matches a module whose dotted name equals it or ends with ``.<target>`` (``"query"`` matches
    ``encoder.layer.0.attention.self.query``). Calling it again with another name adds a second adapter.

    Raises:
        ValueError: when no module matches (the message lists the linear layers there are).
        TypeError: when a target is neither ``nn.Linear`` nor ``nn.Embedding``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"inject_lora adapts a torch nn.Module, got {type(model).__name__}; load the model first")
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}; e.g. LoRAConfig(r=8, alpha=16)")
    if adapter_name in getattr(model, "lora_configs", {}):
        raise ValueError(f"the model already has an adapter named {adapter_name!r}; pick another name, "
                         f"or delete_adapter(model, {adapter_name!r}) first")
    heads = _output_head_names(model)
    targets: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if _INTERNAL & set(name.split(".")) or isinstance(module, ModulesToSave):
            continue  # inside a LoRA layer or a saved-module wrapper
        if config.target_modules == "all-linear":
            wanted = (is_linear_like(module) or isinstance(module, LoRALinear)) and name not in heads
        else:
            wanted = _matches(name, tuple(config.target_modules))
        if wanted:
            if not (is_linear_like(module) or isinstance(module, (nn.Embedding, LoRALayer))):
                raise TypeError(f"module {name!r} is a {type(module).__name__}; LoRA supports nn.Linear, "
                                f"transformers' Conv1D and nn.Embedding. Remove it from target_modules.")
            targets.append((name, module))
    if not targets:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:12]
        raise ValueError(f"no module matches target_modules={config.target_modules!r}; "
                         f"linear layers in this model include {linear}")
    for name, module in targets:
        if not isinstance(module, LoRALayer):
            module = LoRAEmbedding(module) if isinstance(module, nn.Embedding) else LoRALinear(module)
            _replace(model, name, module)
        module.add_adapter(adapter_name, config)
    for name in config.modules_to_save:
        matched = [n for n, m in model.named_modules() if _matches(n, (name,)) and ".modules_to_save." not in n
                   and not n.endswith(".original_module")]
        if not matched:
            raise ValueError(f"modules_to_save names {name!r} but the model has no such module; "
                             f"pass modules_to_save=() if the head needs no training")
        for full_name in matched:
            wrapper = model.get_submodule(full_name)
            if not isinstance(wrapper, ModulesToSave):
                wrapper = ModulesToSave(wrapper)
                _replace(model, full_name, wrapper)
            wrapper.add_adapter(adapter_name)
    model.lora_configs = {**getattr(model, "lora_configs", {}), adapter_name: config}
    set_adapter(model, adapter_name)
    return [name for name, _ in targets]


def adapter_modules(model: nn.Module) -> list[tuple[str, LoRALayer | ModulesToSave]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (LoRALayer, ModulesToSave))]


def set_adapter(model: nn.Module, name: str) -> None:
    """Make ``name`` the active adapter of every LoRA layer and saved module, and the only trainable one."""
    if name not in getattr(model, "lora_configs", {}):
        raise KeyError(f"the model has no adapter {name!r}; it has {list(getattr(model, 'lora_configs', {}))}: "
                       f"inject_lora(model, config, {name!r}) or load_adapter(model, path, {name!r}) first")
    for layer_name, module in adapter_modules(model):
        names = module.adapter_names if isinstance(module, LoRALayer) else list(module.modules_to_save)
        if name in names:
            module.set_adapter(name)
        elif isinstance(module, LoRALayer) and module.merged:
            raise RuntimeError(f"{layer_name} has adapter(s) {module.merged_adapters} merged into its weight; "
                               f"call unmerge_lora(model) before switching to {name!r}")
        else:
            module.active_adapter = None  # this adapter does not touch this layer: it runs as the base layer
    mark_only_lora_trainable(model)


def mark_only_lora_trainable(model: nn.Module) -> None:
    """Freeze every parameter except the active adapter's ``A``/``B`` and its copies of ``modules_to_save``."""
    if not adapter_modules(model):
        raise ValueError("the model has no LoRA adapters: freezing everything would leave nothing to train; "
                         "inject_lora(model, config) first")
    for p in model.parameters():
        p.requires_grad_(False)
    for _, module in adapter_modules(model):
        name = module.active_adapter
        for key in _ADAPTER_KEYS:
            container = getattr(module, key, None)
            if container is not None and name in container:
                item = container[name]
                for p in ([item] if isinstance(item, nn.Parameter) else item.parameters()):
                    p.requires_grad_(True)


@contextmanager
def disable_adapters(model: nn.Module):
    """``with disable_adapters(model):`` runs the bare pretrained model (merged adapters are unmerged)."""
    modules = [m for _, m in adapter_modules(model)]
    for m in modules:
        m.disabled = True
    try:
        yield model
    finally:
        for m in modules:
            m.disabled = False


def merge_lora(model: nn.Module, safe_merge: bool = False) -> None:
    """Fold the active adapter into the base weights: W0 <- W0 + s B A in every LoRA layer.

    ``safe_merge=True`` first computes every layer's merged weight in a copy and raises ``ValueError`` before
    changing any weight if one of them holds NaN or inf (a broken adapter must not silently ruin the base model).
    """
    layers = [(n, m) for n, m in adapter_modules(model) if isinstance(m, LoRALayer)]
    if not layers:
        raise ValueError("the model has no LoRA layers to merge; inject_lora(model, config) first")
    if safe_merge:
        with torch.no_grad():
            broken = [n for n, m in layers if m.active_adapter is not None and m.active_adapter not in m.merged_adapters
                      and not torch.isfinite(m.merged_weight()).all()]
        if broken:
            raise ValueError(f"merging would put NaN or inf into {len(broken)} weight(s), e.g. {broken[:3]}; no weight "
                             f"was changed. The adapter diverged in training: retrain it at a lower learning rate, "
                             f"or load an earlier adapter file")
    for _, m in layers:
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """W0 <- W0 - ΔW in every LoRA layer that has its adapter merged (the unmerged model again)."""
    if not any(isinstance(m, LoRALayer) for _, m in adapter_modules(model)):
        raise ValueError("the model has no LoRA layers to unmerge; inject_lora(model, config) first")
    for _, m in adapter_modules(model):
        if isinstance(m, LoRALayer):
            m.unmerge()


@dataclass(frozen=True)
class ParamReport:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    def __str__(self) -> str:
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {self.percent:.4f}"


def trainable_report(model: nn.Module) -> ParamReport:
    """Trainable versus all parameters (shared tensors counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"trainable_report counts the parameters of an nn.Module, got {type(model).__name__}")
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    if total == 0:
        raise ValueError(f"the {type(model).__name__} has no parameters to count; pass the model itself, "
                         f"not a parameter-free wrapper or an empty container")
    return ParamReport(trainable, total)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from every layer (unmerge first if it is merged)."""
    if name not in getattr(model, "lora_configs", {}):
        raise KeyError(f"the model has no adapter {name!r} to delete; it has {list(getattr(model, 'lora_configs', {}))}")
    for _, m in adapter_modules(model):
        if isinstance(m, LoRALayer) and name in m.merged_adapters:
            m.unmerge()
        for key in _ADAPTER_KEYS:
            container = getattr(m, key, None)
            if container is not None and name in container:
                del container[name]
        if isinstance(m, LoRALayer):
            m.scaling.pop(name, None)
        remaining = list(m.scaling) if isinstance(m, LoRALayer) else list(m.modules_to_save)
        if m.active_adapter == name:
            m.active_adapter = remaining[0] if remaining else None
    configs = dict(model.lora_configs)
    configs.pop(name)
    model.lora_configs = configs
