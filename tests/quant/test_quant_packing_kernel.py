"""Chapter 5: int32 packing (2, 3, 4, 8 bits), the kernel layout, the Triton kernels (interpreter on CPU),
QuantLinear, and the GPU benchmark's CPU mode."""

import importlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from minillm.quant.gptq import gptq_quantize
from minillm.quant.kernel_layout import kernel_weight
from minillm.quant.linear import QuantLinear, to_quant_linear
from minillm.quant.packing import (PackedWeight, codes_per_word, pack_cols, pack_rows, pack_weight, packed_rows,
                                   unpack_cols, unpack_rows)
from notebook_utils import load_script


def quantized_layer(N=256, K=512, bits=4, groupsize=128, actorder=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(1024, K, generator=g) * torch.exp(torch.randn(K, generator=g))
    W = torch.randn(N, K, generator=g) * 0.05
    return gptq_quantize(W, 2 / 1024 * X.T @ X, bits, groupsize=groupsize, actorder=actorder)


def random_packed(K, N, bits, G, act_order=True, uneven=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**bits, (K, N), generator=g)
    zeros = torch.randint(0, 2**bits, (G, N), generator=g)
    scales = torch.rand(G, N, generator=g) * 0.01 + 0.001
    g_idx = torch.randperm(K, generator=g) // (K // G) if act_order else torch.arange(K) // (K // G)
    if uneven:
        g_idx = torch.randint(0, G, (K,), generator=g)
    return PackedWeight(pack_rows(codes, bits), scales, pack_cols(zeros, bits), g_idx.to(torch.int32), bits)


def triton_matmul():
    tm = pytest.importorskip("minillm.quant.triton_matmul")
    if not tm.triton_available():
        pytest.skip("triton is not installed")
    return tm


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_round_trip(bits):
    codes = torch.randint(0, 2**bits, (64, 32))
    packed = pack_rows(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (64 * bits // 32, 32) == (packed_rows(64, bits), 32)
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


def test_3bit_layout_is_one_bit_stream_with_rows_10_and_21_straddling():
    codes = torch.zeros(32, 4, dtype=torch.long)
    codes[9, 0] = 0b111  # word 0, bits 27-29
    codes[10, 1] = 0b101  # low bits 01 at bits 30-31 of word 0, high bit 1 at bit 0 of word 1
    codes[21, 2] = 0b110  # low bit 0 at bit 31 of word 1, high bits 11 at bits 0-1 of word 2
    codes[31, 3] = 0b111  # bits 29-31 of word 2
    p = pack_rows(codes, 3).long() & 0xFFFFFFFF
    assert p.shape == (3, 4)
    assert p[:, 0].tolist() == [0b111 << 27, 0, 0]
    assert p[:, 1].tolist() == [0b01 << 30, 1, 0]
    assert p[:, 2].tolist() == [0, 0, 0b11]
    assert p[:, 3].tolist() == [0, 0, 0b111 << 29]


def test_unpackable_widths_and_ranges_raise():
    with pytest.raises(ValueError, match="use one of"):
        pack_rows(torch.zeros(32, 4, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="straddle"):
        codes_per_word(3)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_rows(torch.full((8, 4), 16), 4)
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_rows(torch.zeros(12, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="multiple of 32"):
        pack_rows(torch.zeros(48, 4, dtype=torch.long), 3)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_packed_weight_dequantizes_to_the_gptq_weight(bits):
    Q, grid = quantized_layer(N=64, K=128, bits=bits, groupsize=32)
    packed = pack_weight(Q, grid)
    assert packed.qweight.shape == (128 * bits // 32, 64) and packed.qzeros.shape == (4, 64 * bits // 32)
    torch.testing.assert_close(packed.dequantize(), Q.T, atol=1e-6, rtol=0)


def test_kernel_layout_keeps_natural_layers_and_regroups_act_order():
    natural = random_packed(256, 64, 4, 2, act_order=False)
    kw = kernel_weight(natural)
    assert kw.row_index is None and kw.qweight.data_ptr() == natural.qweight.data_ptr() and kw.group_rows == 128
    act = random_packed(256, 64, 4, 2, act_order=True)
    kw = kernel_weight(act)
    assert sorted(kw.row_index.tolist()) == list(range(256)) and kw.group_rows == 128
    groups = act.g_idx[kw.row_index.long()].view(2, 128)  # kernel rows r .. r + 127 share one group
    assert (groups == torch.arange(2)[:, None]).all()
    torch.testing.assert_close(kw.dequantize(), act.dequantize(), atol=0, rtol=0)


@pytest.mark.parametrize("bits, K, G, uneven", [(8, 40, 1, False), (3, 512, 4, True), (4, 576, 1, False)])
def test_kernel_layout_pads_groups_to_32_rows_with_zero_contributions(bits, K, G, uneven):
    packed = random_packed(K, 32, bits, G, act_order=False, uneven=uneven)
    kw = kernel_weight(packed)
    counts = torch.bincount(packed.g_idx.long(), minlength=G)
    assert kw.group_rows % 32 == 0 and kw.group_rows >= counts.max()
    assert kw.qweight.shape[0] * 32 // bits == G * kw.group_rows
    torch.testing.assert_close(kw.dequantize(), packed.dequantize(), atol=0, rtol=0)


KERNEL_CASES = [(4, 1, 1, False), (4, 1, 2, True), (4, 7, 1, False), (4, 16, 2, True), (4, 40, 1, False),
                (3, 1, 1, False), (3, 1, 2, True), (3, 16, 1, False), (2, 1, 1, False), (2, 16, 2, False),
                (8, 1, 2, False), (8, 16, 1, True)]


@pytest.mark.parametrize("bits, M, split_k, pregather", KERNEL_CASES)
def test_triton_kernel_equals_dequantize_then_matmul(bits, M, split_k, pregather):
    tm = triton_matmul()
    Q, grid = quantized_layer(bits=bits)
    packed = pack_weight(Q, grid)
    x = torch.randn(M, 512)
    ref = tm.quant_matmul_torch(x, packed)
    cfg = tm.KernelConfig(128, 128, split_k, 4, 16, pregather)
    y = tm.quant_matmul(x, packed.for_kernel(), config=cfg)
    assert y.shape == (M, 256)
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 1e-5


@pytest.mark.parametrize("bits, M", [(4, 1), (4, 16), (3, 1)])
def test_triton_kernel_in_fp16_the_gpu_dtype(bits, M):
    tm = triton_matmul()
    packed = random_packed(256, 128, bits, 2)
    x = torch.randn(M, 256).half()
    ref = x.float() @ packed.dequantize()
    y = tm.quant_matmul(x, packed.to("cpu", torch.float16).for_kernel())
    assert y.dtype == torch.float16 and ((y.float() - ref).abs().max() / ref.abs().max()).item() < 2e-3


def test_kernel_rejects_mismatched_inputs():
    tm = triton_matmul()
    Q, grid = quantized_layer(N=64, K=128, groupsize=32)
    with pytest.raises(ValueError, match="K=128"):
        tm.quant_matmul(torch.randn(2, 64), pack_weight(Q, grid))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        tm.quant_matmul(torch.ones(2, 128, dtype=torch.int64), pack_weight(Q, grid))
    with pytest.raises(ValueError, match="powers of two"):
        tm.quant_matmul(torch.randn(2, 128), pack_weight(Q, grid), block_n=96)


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


def test_quant_linear_saves_the_common_layout_and_rebuilds_the_kernel_copy_after_loading():
    triton_matmul()
    Q1, grid1 = quantized_layer(N=64, K=128, groupsize=32, seed=1)
    Q2, grid2 = quantized_layer(N=64, K=128, groupsize=32, seed=2)
    a = QuantLinear(pack_weight(Q1, grid1), backend="triton")
    b = QuantLinear(pack_weight(Q2, grid2), backend="triton")
    assert set(a.state_dict()) == {"qweight", "scales", "qzeros", "g_idx"}  # the kernel copy is never saved
    x = torch.randn(1, 128)
    first = a.kernel_weight()
    assert a.kernel_weight() is first  # built once
    torch.testing.assert_close(a(x), x @ Q1.T, atol=1e-5, rtol=1e-5)
    a.load_state_dict(b.state_dict())  # in-place copies: the layer must notice
    assert a.kernel_weight() is not first
    torch.testing.assert_close(a(x), x @ Q2.T, atol=1e-5, rtol=1e-5)


def _load(name):
    return load_script(f"benchmarks/{name}.py")


def test_gpu_benchmark_dry_run_checks_every_width_and_records_each_config(tmp_path):
    bench = _load("ch05_quant_matmul_gpu")
    path = bench.main(["--dry-run", "--out", str(tmp_path / "q.json")])
    data = json.loads(path.read_text())
    assert data["dry_run"] and data["machine"]["device_type"] == "cpu" and data["device_facts"]["triton"]
    assert [(r["K"], r["N"], r["M"]) for r in data["rows"]] == [(256, 256, 1), (256, 256, 16)]
    tm = triton_matmul()
    for r in data["rows"]:
        configs = tm.GEMV_CONFIGS if r["M"] == 1 else tm.GEMM_CONFIGS
        for bits in ("int4", "int3", "int2"):
            q = r[bits]
            assert q["max_rel_error"] < 1e-5 and q["bytes"] < r["fp16"]["bytes"]
            assert [c["config"] for c in q["configs"]] == [asdict(c) for c in configs[:2]]
            assert q["seconds"] == min(c["seconds"] for c in q["configs"])
        assert r["int3"]["bytes"] < r["int4"]["bytes"] and "natural_order_seconds" in r["int4"]


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


def test_gpu_benchmark_records_a_failing_configuration_and_keeps_measuring(tmp_path, monkeypatch):
    tm = triton_matmul()
    bench = _load("ch05_quant_matmul_gpu")
    bad = tm.KernelConfig(96, 128)  # not a power of two: quant_matmul refuses it
    monkeypatch.setattr(tm, "GEMV_CONFIGS", (bad, tm.GEMV_CONFIGS[0]))
    monkeypatch.setattr(tm, "GEMM_CONFIGS", tm.GEMM_CONFIGS[:1])
    results = bench.run(dry=True, out=tmp_path / "q.json", bits_list=(4,))
    assert [(f["M"], f["config"]["block_n"]) for f in results["failures"]] == [(1, 96)]
    assert "powers of two" in results["failures"][0]["error"]
    written = json.loads((tmp_path / "q.json").read_text())
    assert written["rows"][0]["int4"]["config"]["block_n"] == 128 and len(written["rows"]) == 2


def test_gpu_benchmark_compiles_its_variants_in_parallel_processes(monkeypatch):
    """The GPU run compiles every variant in worker processes first; rehearsed here with the interpreter."""
    tm = triton_matmul()
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    bench = importlib.import_module("ch05_quant_matmul_gpu")  # importable by name: workers unpickle the job function
    monkeypatch.setattr(tm, "GEMV_CONFIGS", tm.GEMV_CONFIGS[:1])
    monkeypatch.setattr(tm, "GEMM_CONFIGS", tm.GEMM_CONFIGS[:1])
    report = bench.precompile((4,), workers=2, device="cpu", timeout=120)
    assert "error" not in report and report["failed"] == []
    assert report["jobs"] == 4 and report["finished"] == 4  # 1 + 1 act-order variants, 1 + 1 natural-order
