"""Chapter 5: whole-model quantization on a trained GPT, and the notebook's re-derivations equal the package."""

import copy
from dataclasses import replace

import pytest
import torch

from minillm.data.lm_batches import TokenSplits, get_batch
from minillm.gpt import GPT, gpt_config
from minillm.quant.gptq import gptq_quantize
from minillm.quant.hessian import HessianAccumulator, layer_error
from minillm.quant.calibrate import QuantConfig, capture_block_inputs, linear_layers, quantize_model
from minillm.quant.linear import QuantLinear, to_quant_linear
from minillm.quant.obq import obq_quantize
from minillm.quant.rtn import rtn_quantize
from minillm.data.shakespeare import load_shakespeare
from minillm.data.char_tokenizer import CharTokenizer
from minillm.gpt.train import LMTrainConfig, train_lm
from notebook_utils import exec_tagged_cells

NOTEBOOK = "book/ch05_gptq.ipynb"


@pytest.fixture(scope="module")
def trained():
    """A 2-layer GPT trained briefly on Shakespeare: real, structured weights and activations."""
    torch.manual_seed(0)
    text = load_shakespeare()
    tok = CharTokenizer.from_text(text)
    splits = TokenSplits.from_tokens(tok.encode(text), 0.1)
    cfg = gpt_config("gpt-tiny", tok.vocab_size, n_layer=2)
    model = GPT(cfg)
    train_lm(model, splits, LMTrainConfig(max_iters=150, batch_size=16, warmup_iters=20, eval_interval=150, eval_iters=2),
             progress=False)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    calib = torch.cat([get_batch(splits.train, cfg.block_size, 16, gen)[0] for _ in range(4)])  # (64, T)
    return model, splits, calib


def _hessian(model, layer, calib):
    acc, handle = HessianAccumulator.attach(layer)
    with torch.no_grad():
        model(calib)
    handle.remove()
    return acc.H


def test_gptq_error_is_at_most_0_8_of_rtn_on_a_trained_layer(trained):
    model, _, calib = trained
    layer = model.blocks[0].attn.c_attn
    H = _hessian(model, layer, calib)
    W = layer.weight.data
    ratio = layer_error(W, gptq_quantize(W, H, 4)[0], H) / layer_error(W, rtn_quantize(W, 4)[0], H)
    assert ratio <= 0.8, ratio


def test_sequential_obq_equals_gptq_on_a_trained_layer(trained):
    model, _, calib = trained
    layer = model.blocks[1].mlp.c_fc
    H = _hessian(model, layer, calib)
    Qs, _ = obq_quantize(layer.weight.data, H, 3, order="sequential")
    Qg, _ = gptq_quantize(layer.weight.data, H, 3)
    assert ((Qs - Qg).norm() / Qg.norm()).item() < 1e-5


def test_quantize_model_is_sequential_and_beats_rtn(trained):
    model, splits, calib = trained
    x, _ = get_batch(splits.val, model.config.block_size, 32, torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)[0]
    drift = {}
    for cfg in (QuantConfig("rtn", 3), QuantConfig("gptq", 3, actorder=True)):
        q = copy.deepcopy(model)
        report = quantize_model(q, q.blocks, calib.split(16), cfg, progress=False)
        assert set(report.errors) == {f"{b}.{n}" for b in range(2) for n in linear_layers(model.blocks[0])}
        for name, lin in linear_layers(q.blocks).items():  # every weight now lies on its grid
            grid = report.grids[name]
            assert torch.equal(grid.dequantize(grid.codes(lin.weight.data)), lin.weight.data)
        with torch.no_grad():
            drift[cfg.method] = (q(x)[0] - reference).pow(2).mean().item()  # output error on held-out text
    assert drift["gptq"] < 0.8 * drift["rtn"], drift
    assert not torch.equal(model.blocks[0].attn.c_attn.weight, q.blocks[0].attn.c_attn.weight)  # deep copies only


def test_second_block_is_calibrated_on_quantized_outputs(trained):
    model, _, calib = trained
    q = copy.deepcopy(model)
    inputs = capture_block_inputs(q, q.blocks[0], [calib], lambda m, b: m(b))
    seen = []
    h = q.blocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    quantize_model(q, q.blocks, [calib], QuantConfig("rtn", 2), progress=False)
    h.remove()
    args, kwargs = inputs[0]
    with torch.no_grad():
        torch.testing.assert_close(seen[0], q.blocks[0](*args, **kwargs))  # the quantized block 0's output
        assert not torch.allclose(seen[0], model.blocks[0](*args, **kwargs), atol=1e-3)  # not the fp32 one


def test_bad_blocks_argument_names_the_fix(trained):
    model, _, calib = trained
    with pytest.raises(TypeError, match="ModuleList"):
        quantize_model(model, model.blocks[0], [calib], QuantConfig())


def test_packed_model_reproduces_the_quantized_loss(trained):
    model, splits, calib = trained
    q = copy.deepcopy(model)
    report = quantize_model(q, q.blocks, [calib], QuantConfig("gptq", 4, 32, actorder=True), progress=False)
    packed = copy.deepcopy(q)
    for name, lin in linear_layers(packed.blocks).items():
        parent, attr = name.rsplit(".", 1)
        setattr(packed.blocks.get_submodule(parent), attr, to_quant_linear(lin, report.grids[name], backend="torch"))
    assert sum(isinstance(m, QuantLinear) for m in packed.modules()) == 8
    x, y = get_batch(splits.val, model.config.block_size, 4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert abs(q(x, y)[1].item() - packed(x, y)[1].item()) < 1e-5


def test_notebook_twins_equal_the_package():
    ns = exec_tagged_cells(NOTEBOOK)
    g = torch.Generator().manual_seed(3)
    X = torch.randn(400, 48, generator=g) * torch.exp(torch.randn(48, generator=g))
    H, W = 2 / 400 * X.T @ X, torch.randn(12, 48, generator=g)
    Q_pkg, _ = gptq_quantize(W, H, 3, blocksize=16)
    for Q in (ns["gptq_sequential"](W, H, 3), ns["gptq_blocked"](W, H, 3, blocksize=16)):
        assert ((Q - Q_pkg).norm() / Q_pkg.norm()).item() < 1e-5
    from minillm.quant.hessian import inverse_hessian, prepare_hessian
    from minillm.quant.quantizer import find_params
    Wd, Hd = prepare_hessian(W, H, 0.01)
    scale, zero = find_params(Wd, 3)
    rows = torch.stack([ns["obq_row"](Wd[i], inverse_hessian(Hd, 0.01), scale[i], zero[i], 3) for i in range(12)])
    torch.testing.assert_close(rows, obq_quantize(W, H, 3, order="greedy")[0], atol=1e-5, rtol=1e-5)
