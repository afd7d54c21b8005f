"""Chapter 5 — OBQ → GPTQ post-training quantization, int32 packing and a Triton low-bit matmul.

The quantization grid, the layer Hessian, round-to-nearest, OBQ, GPTQ (act-order, groups, static groups),
whole-model calibration block by block, packing in the layout common GPTQ tools read, and the packed layer that
serves it. The Triton kernel lives in :mod:`minillm.quant.triton_matmul` and is imported only on demand
(Triton is optional and its interpreter must be configured before import).

Modules: :mod:`~minillm.quant.quantizer`, :mod:`~minillm.quant.hessian`, :mod:`~minillm.quant.rtn`,
:mod:`~minillm.quant.obq`, :mod:`~minillm.quant.gptq`, :mod:`~minillm.quant.calibrate`,
:mod:`~minillm.quant.packing`, :mod:`~minillm.quant.linear`, :mod:`~minillm.quant.triton_matmul`,
:mod:`~minillm.quant.checkpoint` (safetensors save/load of packed models), :mod:`~minillm.quant.llama` (SmolLM2: data, perplexity, the share of RTN's gap GPTQ closes).
"""

from minillm.quant.calibrate import QUANT_FULL, QUANT_TINY, QuantConfig, QuantReport, quantize_model
from minillm.quant.checkpoint import load_quantized, pack_model, save_quantized
from minillm.quant.gptq import DampingRetryWarning, gptq_quantize, gptq_reference
from minillm.quant.hessian import HessianAccumulator, NotPositiveDefiniteError, layer_error
from minillm.quant.linear import QuantLinear, to_quant_linear
from minillm.quant.llama import (CALIB_PLAYS, GAP_TARGETS, consecutive_windows, gap_claim, gap_closed, perplexity,
                                 q4_1_reproduction, quantize_decoder, random_windows, study_closures, study_ppl,
                                 window_nll)
from minillm.quant.obq import obq_quantize
from minillm.quant.packing import PackedWeight, pack_weight
from minillm.quant.quantizer import QuantGrid, find_params, grid_from_weight
from minillm.quant.rtn import rtn_quantize

__all__ = ["gptq_quantize", "gptq_reference", "obq_quantize", "rtn_quantize", "HessianAccumulator",
           "NotPositiveDefiniteError", "layer_error", "QuantGrid", "find_params", "grid_from_weight",
           "PackedWeight", "pack_weight", "QUANT_FULL", "QUANT_TINY", "QuantConfig", "QuantReport", "QuantLinear",
           "quantize_model", "to_quant_linear", "DampingRetryWarning", "CALIB_PLAYS", "GAP_TARGETS",
           "consecutive_windows", "gap_claim", "gap_closed", "perplexity", "q4_1_reproduction", "quantize_decoder",
           "random_windows", "window_nll", "load_quantized", "pack_model", "save_quantized",
           "study_closures", "study_ppl"]
