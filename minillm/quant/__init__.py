"""Post-training quantization of linear layers: RTN, OBQ and GPTQ, int32 packing and a Triton kernel.

Defined in chapter 5. The Triton kernel lives in :mod:`minillm.quant.triton_matmul` and is imported
only on demand (Triton is optional and its interpreter must be configured before import).
"""

from minillm.quant.gptq import gptq_quantize, gptq_reference
from minillm.quant.hessian import HessianAccumulator, NotPositiveDefiniteError, layer_error
from minillm.quant.model import QuantConfig, QuantLinear, quantize_model, to_quant_linear
from minillm.quant.obq import obq_quantize
from minillm.quant.packing import PackedWeight, pack_weight
from minillm.quant.quantizer import QuantGrid, find_params, grid_from_weight
from minillm.quant.rtn import rtn_quantize

__all__ = ["gptq_quantize", "gptq_reference", "obq_quantize", "rtn_quantize", "HessianAccumulator",
           "NotPositiveDefiniteError", "layer_error", "QuantGrid", "find_params", "grid_from_weight",
           "PackedWeight", "pack_weight", "QuantConfig", "QuantLinear", "quantize_model", "to_quant_linear"]
