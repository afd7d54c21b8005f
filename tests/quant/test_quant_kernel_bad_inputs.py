"""Bad inputs to chapter 5's packed path fail early, naming the problem and the fix (the catalogue's packing part:
PackedWeight, pack_weight, QuantLinear, to_quant_linear; the other chapter-5 names are catalogued beside it)."""

from __future__ import annotations

import torch

from bad_inputs import BadInput, cases_param, check_case
from minillm.quant import PackedWeight, QuantLinear, pack_weight, to_quant_linear
from minillm.quant.packing import pack_cols, pack_rows
from minillm.quant.quantizer import grid_from_weight


def _grid_and_weight(N=32, K=64, bits=4, groupsize=32, seed=0):
    W = torch.randn(N, K, generator=torch.Generator().manual_seed(seed))
    grid = grid_from_weight(W, bits, groupsize)
    return grid.dequantize(grid.codes(W)), grid, W  # the quantized weight, its grid, the original


Q, GRID, W_FP = _grid_and_weight()
PACKED = pack_weight(Q, GRID)


def _packed(**change):
    fields = dict(qweight=PACKED.qweight, scales=PACKED.scales, qzeros=PACKED.qzeros, g_idx=PACKED.g_idx, bits=4)
    fields.update(change)
    return PackedWeight(**fields)


def _linear(weight, bias=True):
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    lin.weight.data = weight.clone()
    return lin


def _layer(backend="torch"):
    return QuantLinear(PACKED, backend=backend)


CASES = [
    BadInput("minillm.quant.PackedWeight", "5-bit codes", lambda: _packed(bits=5), ValueError,
             r"bits=5 cannot be packed; use one of \(2, 3, 4, 8\)"),
    BadInput("minillm.quant.PackedWeight", "float words instead of int32", lambda: _packed(qweight=PACKED.qweight.float()),
             TypeError, "must be int32 words.*pack_rows / pack_cols"),
    BadInput("minillm.quant.PackedWeight", "qweight for another number of rows",
             lambda: _packed(qweight=PACKED.qweight[:4]), ValueError, r"does not hold K=64 rows.*expected \(8, 32\)"),
    BadInput("minillm.quant.PackedWeight", "qzeros packed for another width",
             lambda: _packed(qzeros=pack_cols(torch.zeros(2, 32, dtype=torch.long), 8)), ValueError,
             r"qzeros of shape \(2, 8\).*expected \(2, 4\)"),
    BadInput("minillm.quant.PackedWeight", "a 1-D scales vector", lambda: _packed(scales=PACKED.scales[0]),
             ValueError, r"scales must be a floating \(G, N\) tensor"),
    BadInput("minillm.quant.pack_weight", "a weight of another layer's shape", lambda: pack_weight(Q[:, :32], GRID),
             ValueError, r"does not match the grid.*pass the weight \(out, in\) that this grid quantized"),
    BadInput("minillm.quant.pack_weight", "the unquantized weight", lambda: pack_weight(W_FP, GRID),
             ValueError, "not on the grid.*quantize the layer first"),
    BadInput("minillm.quant.pack_weight", "NaN in the weight", lambda: pack_weight(Q.masked_fill(Q > 1, float("nan")), GRID),
             ValueError, "NaN or infinite.*quantize a finite weight"),
    BadInput("minillm.quant.pack_weight", "3-bit codes for 48 input rows",
             lambda: pack_weight(*_grid_and_weight(N=32, K=48, bits=3, groupsize=16)[:2]), ValueError,
             "in_features K=48 cannot be packed at 3 bits: pad it to a multiple of 32"),
    BadInput("minillm.quant.pack_weight", "a (scale, zero) tuple instead of a QuantGrid",
             lambda: pack_weight(Q, (GRID.scale, GRID.zero)), TypeError, "grid must be a QuantGrid.*grid_from_weight"),
    BadInput("minillm.quant.QuantLinear", "an unknown backend", lambda: QuantLinear(PACKED, backend="cuda"),
             ValueError, "backend must be 'auto', 'triton' or 'torch'"),
    BadInput("minillm.quant.QuantLinear", "a dense weight instead of a PackedWeight", lambda: QuantLinear(Q),
             TypeError, r"takes a PackedWeight, got Tensor.*pack_weight\(Q, grid\)"),
    BadInput("minillm.quant.QuantLinear", "a bias of the wrong length", lambda: QuantLinear(PACKED, torch.zeros(31)),
             ValueError, r"bias of shape \(31,\) does not match out_features=32"),
    BadInput("minillm.quant.QuantLinear", "g_idx naming a group that has no scales",
             lambda: QuantLinear(_packed(g_idx=torch.full((64,), 5, dtype=torch.int32))), ValueError,
             r"g_idx names groups outside \[0, 2\).*re-pack it with pack_weight"),
    BadInput("minillm.quant.QuantLinear", "NaN scales (a corrupt file)",
             lambda: QuantLinear(_packed(scales=torch.full_like(PACKED.scales, float("nan")))), ValueError,
             "scales hold NaN.*re-pack it"),
    BadInput("minillm.quant.QuantLinear", "inputs with the wrong feature count", lambda: _layer()(torch.randn(2, 63)),
             ValueError, "input has 63 features, this QuantLinear expects 64; pass inputs whose last dimension is 64"),
    BadInput("minillm.quant.QuantLinear", "integer token ids instead of activations",
             lambda: _layer()(torch.ones(2, 64, dtype=torch.long)), TypeError, "must be a floating tensor.*x.float"),
    BadInput("minillm.quant.QuantLinear", "integer inputs on the Triton backend",
             lambda: _layer("triton")(torch.ones(2, 64, dtype=torch.long)), TypeError, "must be a floating tensor"),
    BadInput("minillm.quant.to_quant_linear", "a Conv2d instead of an nn.Linear",
             lambda: to_quant_linear(torch.nn.Conv2d(64, 32, 1), GRID), TypeError,
             "packs an nn.Linear, got Conv2d.*quantize and pack only the linear layers"),
    BadInput("minillm.quant.to_quant_linear", "a layer that was never quantized",
             lambda: to_quant_linear(_linear(W_FP), GRID), ValueError, "not on the grid.*quantize"),
    BadInput("minillm.quant.to_quant_linear", "the grid of a layer of another shape",
             lambda: to_quant_linear(_linear(torch.zeros(16, 64)), GRID), ValueError, "does not match the grid"),
]


@cases_param(CASES)
def test_bad_input_is_rejected_clearly(case):
    check_case(case)


def test_the_packed_inputs_used_above_are_valid():
    pack_rows(torch.zeros(32, 4, dtype=torch.long), 3)  # 3-bit packing itself is fine
    lin = _linear(Q)
    layer = to_quant_linear(lin, GRID, backend="torch")
    torch.testing.assert_close(layer(torch.eye(64)), lin(torch.eye(64)), atol=1e-5, rtol=1e-5)
