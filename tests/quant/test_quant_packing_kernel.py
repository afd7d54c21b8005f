"""Chapter 5: int32 packing layout, the Triton kernel (interpreter on CPU) and the GPU benchmark's CPU mode."""

import json

import pytest
import torch

from minillm.quant.gptq import gptq_quantize
from minillm.quant.linear import QuantLinear, to_quant_linear
from minillm.quant.packing import pack_cols, pack_rows, pack_weight, unpack_cols, unpack_rows
from notebook_utils import load_script



def quantized_layer(N=256, K=512, bits=4, groupsize=128, actorder=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1024, K, generator=g) * torch.exp(torch.randn(K, generator=g))
    W = torch.randn(N, K, generator=g) * 0.05
    return gptq_quantize(W, 2 / 1024 * X.T @ X, bits, groupsize=groupsize, actorder=actorder)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_unpack_round_trip(bits):
    codes = torch.randint(0, 2**bits, (64, 24))
    packed = pack_rows(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (64 * bits // 32, 24)
    assert torch.equal(unpack_rows(packed, bits), codes)
    assert torch.equal(unpack_cols(pack_cols(codes.T.contiguous(), bits), bits), codes.T)


def test_layout_row_k_sits_in_nibble_k_mod_8():
    codes = torch.zeros(16, 3, dtype=torch.long)
    codes[9, 1] = 5  # word 1, nibble 1
    codes[7, 2] = 15  # word 0, nibble 7: the sign bit of an int32
    packed = pack_rows(codes, 4)
    assert packed[1, 1].item() == 5 << 4
    assert packed[0, 2].item() == -(2**31) + (7 << 28)  # 0xF0000000 as a signed int32
    assert (packed.count_nonzero() == 2)


def test_unpackable_widths_and_ranges_raise():
    with pytest.raises(ValueError, match="3-bit"):
        pack_rows(torch.zeros(32, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_rows(torch.full((8, 4), 16), 4)
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_rows(torch.zeros(12, 4, dtype=torch.long), 4)


@pytest.mark.parametrize("bits", [2, 4])
def test_packed_weight_dequantizes_to_the_gptq_weight(bits):
    Q, grid = quantized_layer(N=64, K=128, bits=bits, groupsize=32)
    packed = pack_weight(Q, grid)
    assert packed.qweight.shape == (128 * bits // 32, 64) and packed.qzeros.shape == (4, 64 * bits // 32)
    torch.testing.assert_close(packed.dequantize(), Q.T, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bits, M, split_k", [(4, 1, 1), (4, 1, 2), (4, 7, 1), (4, 16, 1), (4, 40, 2), (2, 1, 1), (2, 16, 1)])
def test_triton_kernel_equals_dequantize_then_matmul(bits, M, split_k):
    tm = pytest.importorskip("minillm.quant.triton_matmul")
    if not tm.triton_available():
        pytest.skip("triton is not installed")
    Q, grid = quantized_layer(bits=bits)
    packed = pack_weight(Q, grid)
    x = torch.randn(M, 512)
    ref = tm.quant_matmul_torch(x, packed)
    y = tm.quant_matmul(x, packed, block_n=128, block_k=128, split_k=split_k)
    assert y.shape == (M, 256)
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_kernel_rejects_mismatched_inputs():
    tm = pytest.importorskip("minillm.quant.triton_matmul")
    if not tm.triton_available():
        pytest.skip("triton is not installed")
    Q, grid = quantized_layer(N=64, K=128, groupsize=32)
    with pytest.raises(ValueError, match="K=128"):
        tm.quant_matmul(torch.randn(2, 64), pack_weight(Q, grid))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_quant_linear_matches_the_dequantized_linear(backend):
    Q, grid = quantized_layer(N=128, K=256, groupsize=64)
    lin = torch.nn.Linear(256, 128)
    lin.weight.data = Q
    qlin = to_quant_linear(lin, grid, backend=backend)
    x = torch.randn(2, 3, 256)
    torch.testing.assert_close(qlin(x), lin(x), atol=1e-5, rtol=1e-5)
    assert isinstance(qlin, QuantLinear) and qlin.qweight.numel() * 4 == 256 * 128 // 2
    with pytest.raises(ValueError, match="backend"):
        QuantLinear(qlin.packed, backend="cuda")


def _load(name):
    return load_script(f"benchmarks/{name}.py")


def test_gpu_benchmark_dry_run_checks_the_kernel_on_cpu(tmp_path):
    bench = _load("ch05_quant_matmul_gpu")
    path = bench.main(["--dry-run", "--out", str(tmp_path / "q.json")])
    data = json.loads(path.read_text())
    assert data["dry_run"] and data["machine"]["device_type"] == "cpu"
    assert {(r["K"], r["N"], r["M"]) for r in data["rows"]} == {(256, 512, 1), (256, 512, 16), (512, 256, 1), (512, 256, 16)}
    for r in data["rows"]:
        for bits in ("int4", "int2"):
            assert r[bits]["max_rel_error"] < 1e-5 and r[bits]["bytes"] < r["fp16"]["bytes"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_gpu_benchmark_fails_clearly_without_a_gpu():
    bench = _load("ch05_quant_matmul_gpu")
    with pytest.raises(SystemExit, match="needs a CUDA GPU.*--dry-run"):
        bench.run(dry=False)


def test_gpu_benchmark_packs_random_weights_with_act_order_groups():
    bench = _load("ch05_quant_matmul_gpu")
    p = bench.random_packed(256, 64, 4, "cpu", torch.float32, torch.Generator().manual_seed(0))
    assert sorted(p.g_idx.tolist()) == [k // 128 for k in range(256)] and p.g_idx.tolist() != sorted(p.g_idx.tolist())


def test_cpu_benchmark_runs_and_gptq_matches_the_reference(tmp_path):
    bench = _load("ch05_gptq_cpu")
    path = bench.main(["--bar-size", "256", "--sizes", "16", "32", "--out", str(tmp_path / "g.json")])
    data = json.loads(path.read_text())
    assert [r["size"] for r in data["curve"]] == [16, 32]
    assert data["bar"]["relative_difference"] < 1e-5
    assert data["bar"]["layer_error"]["gptq"] < data["bar"]["layer_error"]["rtn"]
    assert all(r["obq_seconds"] > 0 and r["gptq_seconds"] > 0 for r in data["curve"])
