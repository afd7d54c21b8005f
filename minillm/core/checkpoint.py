"""Save and load models as safetensors plus a JSON config — no pickle, so loading cannot run code.

``save_model(model, "gpt.safetensors")`` writes the weights and, next to them, ``gpt.json`` with the
dataclass config; a chapter's loader (e.g. :func:`minillm.gpt.load_gpt`) rebuilds the model from both with
:func:`load_config` and :func:`load_weights`. Tied weights (the GPT's embedding and output head) are stored once.
A missing file raises ``FileNotFoundError``; a truncated or foreign one :class:`CheckpointError`; each names the
file and the fix, never a bare library error.

Defined in the foundation; chapter 5 loads chapter 1's trained GPT with it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as _load_model
from safetensors.torch import save_model as _save_model

C = TypeVar("C")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model it is loaded into."""


def save_model(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) and its ``config`` dataclass to ``path.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_model(model, str(path))
    config = getattr(model, "config", None)
    if config is not None and is_dataclass(config):
        path.with_suffix(".json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return path


def load_config(path: str | Path, config_cls: type[C]) -> C:
    """The dataclass config saved beside ``path`` (``path.json``) by :func:`save_model`."""
    config_path = Path(path).with_suffix(".json")
    if not config_path.exists():
        raise FileNotFoundError(f"no config file {config_path} beside the weights; write both with "
                              f"minillm.core.checkpoint.save_model(model, {str(path)!r})")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path} is not valid JSON ({err}); it is corrupt: save the model again") from None
    known = {f.name for f in fields(config_cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{config_path} has fields {unknown} that {config_cls.__name__} does not know: "
                              "it was written for another model class")
    return config_cls(**raw)


def load_weights(model: torch.nn.Module, path: str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Load the safetensors file ``path`` into ``model`` (strictly: every tensor, every shape)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; write one with minillm.core.checkpoint.save_model(model, "
                              f"{str(path)!r})")
    try:
        _load_model(model, str(path), device=str(device))
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); it is truncated or corrupt: "
                              "save the model again") from None
    except RuntimeError as err:  # missing/unexpected keys or shapes
        raise CheckpointError(f"{path} does not fit a {type(model).__name__} built from its config: {err}. "
                              "Load it into the model class and config it was saved from.") from None
    return model
