"""Save and load models as safetensors plus a JSON config — no pickle, so loading cannot run code.

``save_model(model, "gpt.safetensors")`` writes the weights and, next to them, ``gpt.json`` with the
dataclass config; ``load_gpt("gpt.safetensors")`` rebuilds the model. Tied weights (the GPT's embedding
and output head) are stored once.

Defined in the foundation; chapter 5 loads chapter 1's trained GPT with it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model as _save_model

from minillm.gpt import GPT, GPTConfig


def save_model(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) and its ``config`` dataclass to ``path.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_model(model, str(path))
    config = getattr(model, "config", None)
    if config is not None:
        path.with_suffix(".json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return path


def load_gpt(path: str | Path, device: torch.device | str = "cpu") -> GPT:
    """Rebuild a :class:`~minillm.gpt.GPT` saved with :func:`save_model`."""
    path = Path(path)
    config_path = path.with_suffix(".json")
    if not path.exists() or not config_path.exists():
        raise FileNotFoundError(f"expected {path} and {config_path}; write them with minillm.checkpoint.save_model(model, {str(path)!r})")
    model = GPT(GPTConfig(**json.loads(config_path.read_text())))
    load_model(model, str(path), device=str(device))
    return model.to(device)
