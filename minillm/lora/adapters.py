"""Adapter files: just one adapter's tensors, in safetensors, with its config in the header.

:func:`save_adapter` writes the adapter's ``A``, ``B`` and saved-module copies (the base weights are not
saved: the file is about 1.5 % of a full checkpoint of MiniLM); :func:`load_adapter` puts them on a fresh copy
of the same base model, injecting the adapter first when the model lacks it, under the saved name or a new one.
A missing, corrupt or foreign file raises an error naming the file and the fix.

Defined in chapter 3.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from minillm.lora.config import LoRAConfig
from minillm.lora.model import _ADAPTER_KEYS, inject_lora, set_adapter


def adapter_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Just the tensors of one adapter (its A, B and saved-module copies), keyed by module path."""
    state = {}
    for key, tensor in model.state_dict().items():
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part in _ADAPTER_KEYS and parts[i + 1] == adapter_name:
                state[key] = tensor.detach().clone().contiguous()
                break
    if not state:
        raise KeyError(f"the model has no adapter {adapter_name!r}; inject_lora(model, config, {adapter_name!r}) first")
    return state


def save_adapter(model: nn.Module, path: str | Path, adapter_name: str = "default") -> Path:
    """Write one adapter (safetensors; its LoRAConfig and name in the header). The base weights are not saved."""
    configs = getattr(model, "lora_configs", {})
    if adapter_name not in configs:
        raise KeyError(f"the model has no adapter {adapter_name!r} to save (it has {list(configs)}); "
                       f"inject_lora(model, config, {adapter_name!r}) and train it first")
    config = configs[adapter_name]
    meta = {"lora_config": json.dumps(asdict(config)), "adapter_name": adapter_name}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model, adapter_name), str(path), metadata=meta)
    return path


def load_adapter(model: nn.Module, path: str | Path, adapter_name: str | None = None) -> nn.Module:
    """Load an adapter file onto ``model`` (the same base model it was trained on), as ``adapter_name``
    (default: the name it was saved under). Injects the adapter first when the model lacks it.

    Raises:
        FileNotFoundError: no such file. ValueError: the file is corrupt, was not written by
            :func:`save_adapter`, or a tensor is missing or does not fit the model.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no adapter file at {path}; write one with save_adapter(model, {str(path)!r})")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            saved = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable safetensors adapter file ({err}); it is truncated or corrupt: "
                         "save the adapter again with save_adapter") from None
    if "lora_config" not in meta:
        raise ValueError(f"{path} has no 'lora_config' in its header: it was not written by save_adapter")
    cfg = json.loads(meta["lora_config"])
    cfg = LoRAConfig(**{**cfg, "target_modules": cfg["target_modules"] if isinstance(cfg["target_modules"], str)
                        else tuple(cfg["target_modules"]), "modules_to_save": tuple(cfg["modules_to_save"])})
    old, name = meta["adapter_name"], adapter_name or meta["adapter_name"]
    if name not in getattr(model, "lora_configs", {}):
        inject_lora(model, cfg, name)
    expected = adapter_state_dict(model, name)
    renamed = {_rename(k, old, name): v for k, v in saved.items()}
    missing, unexpected = set(expected) - set(renamed), set(renamed) - set(expected)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}; load it onto the base model it was trained on")
    current = model.state_dict()
    for key, tensor in renamed.items():
        if current[key].shape != tensor.shape:
            raise ValueError(f"{key}: the file has shape {tuple(tensor.shape)}, the model {tuple(current[key].shape)}")
        current[key].copy_(tensor)
    set_adapter(model, name)
    return model


def _rename(key: str, old: str, new: str) -> str:
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in _ADAPTER_KEYS and parts[i + 1] == old:
            parts[i + 1] = new
    return ".".join(parts)


