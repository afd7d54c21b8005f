r"""Save a quantized model as safetensors plus a JSON config, and load it back onto packed layers.

After :func:`minillm.quant.calibrate.quantize_model`, :func:`pack_model` replaces every quantized ``nn.Linear`` by a
:class:`~minillm.quant.linear.QuantLinear`, whose buffers are the layout common GPTQ tools read: for a layer
``name`` the file holds ``name.qweight`` (int32, :math:`(K b/32, N)`), ``name.scales`` :math:`(G, N)`,
``name.qzeros`` (int32, :math:`(G, N b/32)`), ``name.g_idx`` :math:`(K,)` and ``name.bias``. The JSON beside it
(``path.json``) records ``quantize_config`` (``bits``, ``group_size``, ``desc_act``, ``sym``) and each packed
layer's bits, so :func:`load_quantized` can rebuild the packed layers inside a fresh model of the same
architecture before it loads every tensor (strictly: a missing or unexpected tensor is an error). No pickle:
loading cannot run code.

Defined in chapter 5.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model as _load_model
from safetensors.torch import save_model as _save_model

from minillm.core.checkpoint import CheckpointError
from minillm.quant.calibrate import QuantReport, linear_layers
from minillm.quant.linear import QuantLinear, to_quant_linear
from minillm.quant.packing import PackedWeight

FORMAT = "minillm-gptq-1"


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def pack_model(model: nn.Module, blocks: nn.ModuleList, report: QuantReport, backend: str = "auto") -> list[str]:
    """Replace every linear of ``blocks`` that ``report`` quantized by a packed :class:`QuantLinear`, in place.

    Returns the packed layers' names relative to ``model`` (what :func:`save_quantized` writes).
    """
    if not isinstance(report, QuantReport) or not report.grids:
        raise ValueError("report must be the QuantReport of quantize_model(model, blocks, ...) with its grids; "
                         "quantize the model first")
    prefix = next((n for n, m in model.named_modules() if m is blocks), None)
    if prefix is None:
        raise ValueError("blocks is not a submodule of model: pass the model and its own block list (e.g. gpt.blocks)")
    layers = {f"{b}.{n}": m for b, block in enumerate(blocks) for n, m in linear_layers(block).items()}
    missing = sorted(set(report.grids) - set(layers))
    if missing:
        raise ValueError(f"the report names layers {missing[:3]} that these blocks do not have as nn.Linear: "
                         "was the model packed already, or quantized with other blocks?")
    names = []
    for key, grid in report.grids.items():
        name = f"{prefix}.{key}" if prefix else key
        _replace(model, name, to_quant_linear(layers[key], grid, backend))
        names.append(name)
    return names


def save_quantized(model: nn.Module, path: str | Path, report: QuantReport) -> Path:
    """Write a packed model's tensors to ``path`` (safetensors) and its quantization config to ``path.json``."""
    packed = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not packed:
        raise ValueError("the model has no QuantLinear layers: pack it first with pack_model(model, blocks, report)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_model(model, str(path))
    cfg = report.config
    meta = {"format": FORMAT, "quantize_config": {"bits": cfg.bits, "group_size": cfg.groupsize,
                                                  "desc_act": cfg.actorder, "sym": cfg.sym, "method": cfg.method},
            "layers": {n: {"bits": m.bits, "in_features": m.in_features, "out_features": m.out_features}
                       for n, m in packed.items()}}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_quantized(model: nn.Module, path: str | Path, backend: str = "auto") -> nn.Module:
    """Load a file of :func:`save_quantized` into ``model``, a fresh model of the same architecture (in place).

    Raises:
        FileNotFoundError: the weights or the JSON beside them are missing.
        CheckpointError: a corrupt file, or one written for another architecture.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    for p in (path, meta_path):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist; write the weights and config with save_quantized(model, "
                                    f"{str(path)!r}, report)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path} is not valid JSON ({err}): it is corrupt; save the model again") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a {FORMAT} config (format {meta.get('format')!r}); "
                              "write it with minillm.quant.save_quantized")
    modules = dict(model.named_modules())
    try:
        with safe_open(str(path), framework="pt") as f:
            for name, info in meta["layers"].items():
                if not isinstance(modules.get(name), nn.Linear):
                    raise CheckpointError(f"{path} packs a layer {name!r} that is not an nn.Linear of this model: it "
                                          "was saved from another architecture; build the model it was saved from")
                keys = set(f.keys())
                tensors = {k: f.get_tensor(f"{name}.{k}") for k in ("qweight", "scales", "qzeros", "g_idx")
                           if f"{name}.{k}" in keys}
                if len(tensors) < 4:
                    raise CheckpointError(f"{path} lacks packed tensors of {name!r}: the file is truncated or not "
                                          "a quantized checkpoint; save the model again")
                bias = f.get_tensor(f"{name}.bias") if f"{name}.bias" in keys else None
                _replace(model, name, QuantLinear(PackedWeight(**tensors, bits=info["bits"]), bias, backend))
        _load_model(model, str(path), strict=True)
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); save the model again") from None
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this model ({str(err).splitlines()[0]}); build the model with the "
                              "configuration it was saved from") from None
    return model
