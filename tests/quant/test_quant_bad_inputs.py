"""Bad inputs to chapter 5's quantizers fail early, naming the problem and the fix (grid, Hessian, RTN, OBQ, GPTQ,
whole-model calibration, the SmolLM2 helpers; the packed path is catalogued in test_quant_kernel_bad_inputs.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from bad_inputs import BadInput, cases_param, check_case
from minillm.quant import (DampingRetryWarning, HessianAccumulator, NotPositiveDefiniteError, QuantConfig, QuantGrid,
                           QuantReport, consecutive_windows, find_params, gap_claim, gap_closed, gptq_quantize,
                           gptq_reference, grid_from_weight, layer_error, obq_quantize, perplexity, q4_1_reproduction,
                           quantize_decoder, quantize_model, random_windows, rtn_quantize, window_nll)
from minillm.core.checkpoint import CheckpointError
from minillm.core.claims import ClaimError
from minillm.quant import load_quantized, pack_model, save_quantized, study_closures, study_ppl

G = torch.Generator().manual_seed(0)
W = torch.randn(8, 16, generator=G)
X = torch.randn(64, 16, generator=G)
H = 2 * X.T @ X / 64
W_INF = W.clone()
W_INF[0, 0] = float("inf")
H_NAN = H.clone()
H_NAN[1, 2] = float("nan")
# symmetric with smallest eigenvalue -0.03 · mean(diag H): 0.01 of damping is too little, 0.1 enough
H_INDEF = H - (torch.linalg.eigvalsh(H)[0] + 0.03 * torch.diag(H).mean()) * torch.eye(16)
IDS = torch.arange(100)


def _saved(tmp, corrupt: str | None = None):
    """A packed, saved _Tiny (optionally with its JSON or weights corrupted) -> path."""
    m = _Tiny()
    report = quantize_model(m, m.blocks, [torch.randn(8, 16)], QuantConfig(groupsize=-1), progress=False)
    pack_model(m, m.blocks, report, backend="torch")
    path = save_quantized(m, tmp / "q.safetensors", report)
    if corrupt == "json":
        path.with_suffix(".json").write_text("{not json")
    elif corrupt == "weights":
        path.write_bytes(path.read_bytes()[:40])
    return path


def _tmp():
    import tempfile
    from pathlib import Path
    return Path(tempfile.mkdtemp())


class _Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.ReLU(), nn.Linear(16, 16))])


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(16, 16))])

    def forward(self, x):
        return self.blocks[0](x)


CASES = [
    BadInput("minillm.quant.find_params", "1-D weight", lambda: find_params(W[0], 4), ValueError,
             r"non-empty 2-D.*got shape \(16,\).*nn.Linear's weight"),
    BadInput("minillm.quant.find_params", "5 bits", lambda: find_params(W, 5), ValueError,
             r"bits=5 is not supported; choose one of"),
    BadInput("minillm.quant.grid_from_weight", "groupsize not dividing K", lambda: grid_from_weight(W, 4, 5),
             ValueError, r"groupsize=5 must be -1 \(per channel\) or a positive divisor"),
    BadInput("minillm.quant.grid_from_weight", "integer weight", lambda: grid_from_weight(W.long(), 4), TypeError,
             r"must be a floating tensor.*\.float\(\)"),
    BadInput("minillm.quant.QuantGrid", "scale and zero of different shapes",
             lambda: QuantGrid(torch.ones(1, 8), torch.ones(2, 8), torch.zeros(16, dtype=torch.long), 4), ValueError,
             r"scale and zero must both be \(G, N\).*grid_from_weight"),
    BadInput("minillm.quant.QuantGrid", "zero scale",
             lambda: QuantGrid(torch.zeros(1, 8), torch.ones(1, 8), torch.zeros(16, dtype=torch.long), 4), ValueError,
             r"scale must be finite and positive.*rebuild it with grid_from_weight"),
    BadInput("minillm.quant.rtn_quantize", "weight containing inf", lambda: rtn_quantize(W_INF, 4), ValueError,
             r"NaN or inf \(1 entries\).*reload the checkpoint"),
    BadInput("minillm.quant.rtn_quantize", "a module instead of its weight", lambda: rtn_quantize(nn.Linear(4, 4), 4),
             TypeError, r"must be a torch.Tensor.*got Linear.*layer.weight.data"),
    BadInput("minillm.quant.gptq_quantize", "weight containing inf", lambda: gptq_quantize(W_INF, H), ValueError,
             r"NaN or inf.*reload the checkpoint"),
    BadInput("minillm.quant.gptq_quantize", "H of another layer", lambda: gptq_quantize(W, H[:8, :8]), ValueError,
             r"H must be \(K, K\).*got \(8, 8\).*HessianAccumulator"),
    BadInput("minillm.quant.gptq_quantize", "NaN in H", lambda: gptq_quantize(W, H_NAN), NotPositiveDefiniteError,
             r"NaN or inf.*run calibration in float32"),
    BadInput("minillm.quant.gptq_quantize", "blocksize and groupsize not multiples",
             lambda: gptq_quantize(W, H, groupsize=8, blocksize=12), ValueError, r"one must be a multiple of the other"),
    BadInput("minillm.quant.gptq_quantize", "3.5 bits", lambda: gptq_quantize(W, H, bits=3.5), ValueError,
             r"bits=3.5 is not supported"),
    BadInput("minillm.quant.NotPositiveDefiniteError", "indefinite H, retries off",
             lambda: gptq_quantize(W, H_INDEF, retries=0), NotPositiveDefiniteError,
             r"not positive definite.*increase percdamp.*tried percdamp up to 0.01"),
    BadInput("minillm.quant.gptq_reference", "weight containing inf", lambda: gptq_reference(W_INF, H), ValueError,
             r"NaN or inf.*reload the checkpoint"),
    BadInput("minillm.quant.gptq_reference", "negative damping", lambda: gptq_reference(W, H, percdamp=-1),
             ValueError, r"percdamp must be >= 0"),
    BadInput("minillm.quant.obq_quantize", "unknown order", lambda: obq_quantize(W, H, order="random"), ValueError,
             r"order must be 'greedy' or 'sequential'"),
    BadInput("minillm.quant.obq_quantize", "weight containing inf", lambda: obq_quantize(W_INF, H), ValueError,
             r"NaN or inf.*reload the checkpoint"),
    BadInput("minillm.quant.HessianAccumulator", "zero input width", lambda: HessianAccumulator(0), ValueError,
             r"in_features must be a positive int.*attach\(layer\)"),
    BadInput("minillm.quant.HessianAccumulator", "inputs of another width",
             lambda: HessianAccumulator(16).add_batch(torch.ones(3, 8)), ValueError,
             r"8 features but the accumulator expects K=16"),
    BadInput("minillm.quant.HessianAccumulator", "NaN inputs",
             lambda: HessianAccumulator(2).add_batch(torch.tensor([[1.0, float("nan")]])), ValueError,
             r"NaN or inf.*run calibration in float32"),
    BadInput("minillm.quant.HessianAccumulator", "attached to a conv",
             lambda: HessianAccumulator.attach(nn.Conv1d(2, 2, 1)), TypeError, r"nn.Linear layers, got Conv1d"),
    BadInput("minillm.quant.layer_error", "Q of another shape", lambda: layer_error(W, W[:4], H), ValueError,
             r"need W and Q of one shape.*pass the layer's weight"),
    BadInput("minillm.quant.QuantConfig", "unknown method", lambda: QuantConfig(method="awq"), ValueError,
             r"unknown method 'awq'; use 'rtn' or 'gptq'"),
    BadInput("minillm.quant.QuantConfig", "6 bits", lambda: QuantConfig(bits=6), ValueError,
             r"bits=6 is not supported; choose one of"),
    BadInput("minillm.quant.QuantConfig", "groupsize 0", lambda: QuantConfig(groupsize=0), ValueError,
             r"groupsize=0: use -1 \(per channel\) or a positive divisor"),
    BadInput("minillm.quant.QuantConfig", "damping as a percentage", lambda: QuantConfig(percdamp=100.0), ValueError,
             r"percdamp=100.0 must be in \[0, 100\).*0.01 is usual"),
    BadInput("minillm.quant.QuantReport", "a dict as config", lambda: QuantReport({"bits": 4}), TypeError,
             r"needs the QuantConfig.*QuantConfig\(\.\.\.\)"),
    BadInput("minillm.quant.quantize_model", "blocks as a list", lambda: quantize_model(_Tiny(), list(_Tiny().blocks),
             [torch.ones(2, 16)], QuantConfig()), TypeError, r"non-empty nn.ModuleList.*gpt.blocks"),
    BadInput("minillm.quant.quantize_model", "no calibration batches",
             lambda: (lambda m: quantize_model(m, m.blocks, [], QuantConfig()))(_Tiny()), ValueError,
             r"no calibration batch reached the first block.*non-empty list of batches"),
    BadInput("minillm.quant.quantize_model", "a dict as config",
             lambda: (lambda m: quantize_model(m, m.blocks, [torch.ones(2, 16)], {"bits": 4}))(_Tiny()), TypeError,
             r"cfg must be a QuantConfig.*QuantConfig\(bits=4"),
    BadInput("minillm.quant.quantize_decoder", "a model without model.layers",
             lambda: quantize_decoder(_Tiny(), torch.ones(2, 4, dtype=torch.long), QuantConfig()), TypeError,
             r"model.model.layers.*call quantize_model with their block list"),
    BadInput("minillm.quant.pack_model", "a report without grids",
             lambda: (lambda m: pack_model(m, m.blocks, QuantReport(QuantConfig())))(_Tiny()), ValueError,
             r"QuantReport of quantize_model.*quantize the model first"),
    BadInput("minillm.quant.save_quantized", "an unpacked model",
             lambda: save_quantized(_Tiny(), _tmp() / "x.safetensors", QuantReport(QuantConfig())), ValueError,
             r"no QuantLinear layers: pack it first with pack_model"),
    BadInput("minillm.quant.load_quantized", "a missing file", lambda: load_quantized(_Tiny(), _tmp() / "none.safetensors"),
             FileNotFoundError, r"does not exist; write the weights and config with save_quantized"),
    BadInput("minillm.quant.load_quantized", "a corrupt JSON", lambda: load_quantized(_Tiny(), _saved(_tmp(), "json")),
             CheckpointError, r"is not valid JSON.*save the model again"),
    BadInput("minillm.quant.load_quantized", "truncated weights", lambda: load_quantized(_Tiny(), _saved(_tmp(), "weights")),
             CheckpointError, r"not a readable safetensors file.*save the model again"),
    BadInput("minillm.quant.load_quantized", "another architecture", lambda: load_quantized(_Other(), _saved(_tmp())),
             CheckpointError, r"packs a layer 'blocks.0.0' that is not an nn.Linear.*build the model it was saved from"),
    BadInput("minillm.quant.study_closures", "a study without baselines", lambda: study_closures({"runs": []}, 4),
             ValueError, r"no fp or RTN 4-bit run.*--resume"),
    BadInput("minillm.quant.study_ppl", "a result without runs", lambda: study_ppl({}, "fp"), ValueError,
             r"not a studies/ch05_smollm2.py result.*read_results"),
    BadInput("minillm.quant.consecutive_windows", "too few tokens", lambda: consecutive_windows(IDS, 10, 16),
             ValueError, r"100 tokens, too few for 10 windows of 16.*fewer or shorter windows"),
    BadInput("minillm.quant.random_windows", "float ids", lambda: random_windows(IDS.float(), 2, 8, 0), ValueError,
             r"1-D torch.long tensor of token ids.*tokenize the text first"),
    BadInput("minillm.quant.window_nll", "1-D windows", lambda: window_nll(_Tiny(), IDS), ValueError,
             r"windows must be \(n, T\) token ids"),
    BadInput("minillm.quant.perplexity", "no windows", lambda: perplexity([], 256), ValueError,
             r"no window NLLs.*window_nll"),
    BadInput("minillm.quant.gap_closed", "RTN better than fp", lambda: gap_closed(40.0, 39.0, 45.0), ValueError,
             r"RTN \(39\) must be worse than full precision \(40\)"),
    BadInput("minillm.quant.gap_claim", "no target for 8 bits", lambda: gap_claim([0.7, 0.8], 8), ValueError,
             r"no target for 8 bits.*\[3, 4\]"),
    BadInput("minillm.quant.q4_1_reproduction", "K not a multiple of 32", lambda: q4_1_reproduction(W, 32), ValueError,
             r"K divisible by 32, got \(8, 16\)"),
]

EXEMPT = {
    "minillm.quant.DampingRetryWarning": "a warning category: raised by gptq_quantize, never called with input",
}


@cases_param(CASES)
def test_bad_input(case):
    check_case(case)


def test_indefinite_hessian_is_retried_with_more_damping_and_says_so():
    with pytest.warns(DampingRetryWarning, match=r"retrying with percdamp=0.1"):
        Q, grid = gptq_quantize(W, H_INDEF)
    assert torch.isfinite(Q).all() and torch.equal(grid.dequantize(grid.codes(Q)), Q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gptq_quantize(W, H)  # a good Hessian: no warning


def test_gap_claim_trips_on_reversed_and_null_results():
    gap_claim([0.70, 0.72, 0.68], 4)
    with pytest.raises(ClaimError):
        gap_claim([-0.2, -0.1, -0.15], 4)  # GPTQ worse than RTN
    with pytest.raises(ClaimError):
        gap_claim([0.0, 0.05, -0.05], 3)  # GPTQ no better than RTN
    with pytest.raises(ClaimError):
        gap_claim([0.5, 0.9, 0.7], 4)  # mean above the target, interval not
