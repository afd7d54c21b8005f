"""A quantized GPT packs, saves as safetensors + JSON, reloads into a fresh model and generates the same tokens."""

from __future__ import annotations

import json

import pytest
import torch

from minillm.gpt import GPT, generate, gpt_config
from minillm.quant import QuantConfig, QuantLinear, load_quantized, pack_model, quantize_model, save_quantized


def _quantized_gpt(bits: int):
    torch.manual_seed(0)
    model = GPT(gpt_config("gpt-tiny", 40)).eval()
    calib = torch.randint(0, 40, (8, 32)).split(4)
    report = quantize_model(model, model.blocks, calib, QuantConfig("gptq", bits, 32, actorder=True), progress=False)
    return model, report


@pytest.mark.parametrize("bits", [4, 3])
def test_saved_model_reloads_and_generates_the_same_tokens(tmp_path, bits):
    model, report = _quantized_gpt(bits)
    prompt = torch.randint(0, 40, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_logits = model(prompt)[0]
    names = pack_model(model, model.blocks, report, backend="torch")
    assert len(names) == len(report.grids) and all(isinstance(model.get_submodule(n), QuantLinear) for n in names)
    path = save_quantized(model, tmp_path / "gpt-q.safetensors", report)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["quantize_config"] == {"bits": bits, "group_size": 32, "desc_act": True, "sym": False, "method": "gptq"}
    fresh = load_quantized(GPT(model.config).eval(), path, backend="torch")
    assert sum(isinstance(m, QuantLinear) for m in fresh.modules()) == len(names)
    with torch.no_grad():
        torch.testing.assert_close(fresh(prompt)[0], want_logits, atol=1e-4, rtol=1e-4)  # packed == fake-quantized
        a = generate(model, prompt, 20, generator=torch.Generator().manual_seed(2))
        b = generate(fresh, prompt, 20, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
