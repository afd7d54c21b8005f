r"""Quantize a whole model block by block, each block calibrated on the outputs of the already quantized ones.

For transformer blocks :math:`f_1, \dots, f_L` and calibration inputs :math:`X_0`:

.. math::

    X_\ell = f_\ell^{\,\mathrm{quant}}(X_{\ell-1}), \qquad
    H^{(\ell, j)} = \tfrac{2}{n} X^{(\ell, j)} X^{(\ell, j)\top} \text{ for every linear } j \text{ of block } \ell,

so a block sees the inputs it will really get at inference — the errors of earlier blocks included —
and each linear layer is quantized against its own Hessian (:mod:`minillm.quant.hessian`).
The first block's inputs are captured with a pre-hook that stops the forward pass, so any model whose
blocks sit in an ``nn.ModuleList`` works (chapter 1's GPT, a BERT encoder). Embeddings and the output
head stay in full precision, as in GPTQ.

The packed inference layer that serves the result is :class:`minillm.quant.linear.QuantLinear`.

Defined in chapter 5.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

import torch
import torch.nn as nn
from tqdm import tqdm

from minillm.core.evaluation import eval_mode
from minillm.quant.gptq import DampingRetryWarning, gptq_quantize
from minillm.quant.hessian import HessianAccumulator, layer_error
from minillm.quant.quantizer import SUPPORTED_BITS, QuantGrid, group_index
from minillm.quant.rtn import rtn_quantize


@dataclass(frozen=True)
class QuantConfig:
    method: Literal["rtn", "gptq"] = "gptq"
    bits: int = 4
    groupsize: int = -1
    actorder: bool = False
    sym: bool = False
    static_groups: bool = False
    blocksize: int = 128
    percdamp: float = 0.01
    calib_sequences: int = 128

    def __post_init__(self):
        if self.method not in ("rtn", "gptq"):
            raise ValueError(f"unknown method {self.method!r}; use 'rtn' or 'gptq'")
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"bits={self.bits} is not supported; choose one of {SUPPORTED_BITS}")
        if self.groupsize != -1 and self.groupsize <= 0:
            raise ValueError(f"groupsize={self.groupsize}: use -1 (per channel) or a positive divisor of in_features")
        if self.blocksize <= 0 or self.calib_sequences <= 0:
            raise ValueError(f"blocksize ({self.blocksize}) and calib_sequences ({self.calib_sequences}) must be "
                             "positive")
        if not 0 <= self.percdamp < 100:
            raise ValueError(f"percdamp={self.percdamp} must be in [0, 100) (a share of mean(diag H); 0.01 is usual)")

    def label(self) -> str:
        group = "" if self.groupsize == -1 else f" g{self.groupsize}"
        return f"{self.method.upper()} {self.bits}-bit{group}{' act-order' if self.actorder else ''}"


#: ``tiny`` suits chapter 1's 128-wide GPT on a CPU; ``full`` the paper's usual setting for large layers.
QUANT_TINY = QuantConfig(bits=4, groupsize=32, actorder=True, calib_sequences=128)
QUANT_FULL = QuantConfig(bits=4, groupsize=128, actorder=True, calib_sequences=128)


@dataclass
class QuantReport:
    """Per-layer results of :func:`quantize_model`."""

    config: QuantConfig
    errors: dict[str, float] = field(default_factory=dict)  # tr((W-Q)H(W-Q)^T) per linear
    grids: dict[str, QuantGrid] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the quantization solves (Hessian collection excluded)
    retries: dict[str, str] = field(default_factory=dict)  # layers that needed more damping: the warning

    def __post_init__(self):
        if not isinstance(self.config, QuantConfig):
            raise TypeError(f"QuantReport needs the QuantConfig it reports on, got {type(self.config).__name__}; "
                            "build one with QuantConfig(...) (quantize_model makes its report itself)")


class _StopForward(Exception):
    pass


def capture_block_inputs(model: nn.Module, first_block: nn.Module, batches: Iterable,
                         forward: Callable[[nn.Module, object], object]) -> list[tuple[tuple, dict]]:
    """The (args, kwargs) ``first_block`` receives for each calibration batch; the rest of the model never runs."""
    captured: list[tuple[tuple, dict]] = []

    def grab(module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in batches:
            try:
                forward(model, batch)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def linear_layers(module: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def _hidden(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """The block's call with its hidden states (first positional, or ``hidden_states=``) replaced."""
    if args:
        return (hidden,) + tuple(args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": hidden}
    raise TypeError("cannot find the hidden states in the block's call: pass them first or as hidden_states=")


@torch.no_grad()
def quantize_model(model: nn.Module, blocks: nn.ModuleList, batches: Iterable, cfg: QuantConfig,
                   forward: Callable[[nn.Module, object], object] = lambda m, b: m(b),
                   progress: bool = True) -> QuantReport:
    """Quantize every ``nn.Linear`` inside ``blocks`` in place (weights replaced by their dequantized values).

    ``forward(model, batch)`` runs the model on one calibration batch (default ``model(batch)``).
    Returns the per-layer errors and grids; pack a layer with :func:`minillm.quant.linear.to_quant_linear` afterwards.
    """
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise TypeError("blocks must be the model's non-empty nn.ModuleList of transformer blocks "
                        "(e.g. gpt.blocks, or bert.encoder.layer)")
    if not isinstance(cfg, QuantConfig):
        raise TypeError(f"cfg must be a QuantConfig, got {type(cfg).__name__}; e.g. QuantConfig(bits=4, groupsize=-1)")
    with eval_mode(model):
        return _quantize_blocks(model, blocks, batches, cfg, forward, progress)


def _quantize_blocks(model: nn.Module, blocks: nn.ModuleList, batches: Iterable, cfg: QuantConfig,
                     forward: Callable[[nn.Module, object], object], progress: bool) -> QuantReport:
    report = QuantReport(cfg)
    inputs = capture_block_inputs(model, blocks[0], batches, forward)
    if not inputs:
        raise ValueError("no calibration batch reached the first block: pass a non-empty list of batches, and a "
                         "forward(model, batch) that runs the model on one")
    for b, block in enumerate(tqdm(blocks, desc=f"quantizing ({cfg.label()})", disable=not progress)):
        layers = linear_layers(block)
        hooks = {name: HessianAccumulator.attach(layer) for name, layer in layers.items()}
        for args, kwargs in inputs:
            block(*args, **kwargs)
        for acc, handle in hooks.values():
            handle.remove()
        for name, layer in layers.items():
            W, H = layer.weight.data, hooks[name][0].H
            t0 = time.perf_counter()
            key = f"{b}.{name}"
            if cfg.method == "gptq":
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", DampingRetryWarning)
                    Q, grid = gptq_quantize(W, H, cfg.bits, cfg.groupsize, cfg.actorder, cfg.blocksize,
                                            cfg.percdamp, cfg.sym, cfg.static_groups)
                for w in caught:
                    if issubclass(w.category, DampingRetryWarning):
                        report.retries[key] = str(w.message)
                        w = warnings.WarningMessage(f"{key}: {w.message}", w.category, w.filename, w.lineno)
                    warnings.warn(w.message, w.category, stacklevel=3)
            elif cfg.method == "rtn":
                Q, grid = rtn_quantize(W, cfg.bits, cfg.groupsize, cfg.sym)
            else:
                raise ValueError(f"unknown method {cfg.method!r}; use 'rtn' or 'gptq'")
            report.seconds += time.perf_counter() - t0
            report.errors[key] = layer_error(W.float(), Q, H)
            report.grids[key] = grid
            layer.weight.data = Q.to(W.dtype)
        # the next block is calibrated on what this quantized block really outputs
        inputs = [_with_hidden(args, kwargs, _hidden(block(*args, **kwargs))) for args, kwargs in inputs]
    return report
