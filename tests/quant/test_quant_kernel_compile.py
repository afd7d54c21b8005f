"""Chapter 5: the Triton kernels compile for an H100/H200 (sm_90) on this CPU-only machine, and the M = 1 path's
machine code is what the design intends — no integer-to-float conversions, no register spills, few instructions
per weight. The interpreter tests prove the arithmetic; this proves the GPU compiler accepts the same source
(constexpr branches, bit casts, atomics) before any GPU time is spent. Static properties only, no timings.

Run directly (``python tests/quant/test_quant_kernel_compile.py``) it prints the report as JSON.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# (kernel, bits, in-kernel gather, x dtype, index into GEMV_CONFIGS / GEMM_CONFIGS)
VARIANTS = [("gemv", 4, True, "fp16", 0), ("gemv", 4, False, "fp16", 1), ("gemv", 3, True, "fp16", 3),
            ("gemm", 4, True, "fp16", 0), ("gemm", 3, False, "fp16", 1)]


def _sass_report(kernel, tools: Path, weights_per_thread: int) -> dict:
    """Registers, spills and the innermost loop's instruction mix of a compiled kernel."""
    cubin = Path(os.environ.get("TMPDIR", "/tmp")) / f"minillm-{os.getpid()}.cubin"
    cubin.write_bytes(kernel.asm["cubin"])
    try:
        sass = subprocess.run([str(tools / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True).stdout
        res = subprocess.run([str(tools / "cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
    finally:
        cubin.unlink(missing_ok=True)
    lines = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", line)]
    address = [int(re.match(r"\s+/\*([0-9a-f]+)\*/", line).group(1), 16) for line in lines]
    loops = []  # backward branches: (target, branch) address pairs
    for line, at in zip(lines, address):
        m = re.search(r"BRA (?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", line)
        if m and m.group(1) and int(m.group(1), 16) < at:
            loops.append((int(m.group(1), 16), at))
    lo, hi = min(loops, key=lambda r: r[1] - r[0]) if loops else (0, -1)
    body = [line for line, at in zip(lines, address) if lo <= at <= hi]
    ops = Counter(re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", line).group(1) for line in body)
    return {"registers": int(re.search(r"REG:(\d+)", res).group(1)), "spill_bytes": int(re.search(r"LOCAL:(\d+)", res).group(1)),
            "loop_instructions": len(body), "per_weight": round(len(body) / weights_per_thread, 2),
            "conversions": sum(n for op, n in ops.items() if op in ("I2F", "I2FP", "F2F")),
            "top": ops.most_common(6)}


def compile_report() -> list[dict]:
    """Compile every variant for sm_90 (no GPU needed) and describe its machine code."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from minillm.quant import triton_matmul as tm

    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    out = []
    for kind, bits, gather, xdt, index in VARIANTS:
        cfg = (tm.GEMV_CONFIGS if kind == "gemv" else tm.GEMM_CONFIGS)[index]
        fn = tm._gemv_kernel if kind == "gemv" else tm._gemm_kernel
        ints = ["N", "stride_qw"] if kind == "gemv" else ["M", "N", "stride_xm", "stride_ym", "stride_qw"]
        sig = {"x_ptr": f"*{xdt}", "qw_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*u8", "idx_ptr": "*i32",
               "y_ptr": "*fp32" if cfg.split_k > 1 else f"*{xdt}", **{n: "i32" for n in ints},
               "TILES": "i32", "TPG": "i32", "TPS": "i32", "magic": "i32"}
        consts = {"BITS": bits, "HAS_IDX": gather, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "SPLIT_K": cfg.split_k}
        if kind == "gemm":
            consts["BLOCK_M"] = cfg.block_m
        sig.update({k: "constexpr" for k in consts})
        names = list(sig)  # pointers, N and strides divisible by 16, as Triton specializes them for real layers
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n.endswith("_ptr") or n in ints}
        kernel = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": cfg.num_warps})
        weights = (cfg.block_k * cfg.block_n) // (32 * cfg.num_warps)  # weights per thread per tile
        out.append({"kernel": kind, "bits": bits, "gather": gather, "x": xdt, "config": cfg.__dict__,
                    **_sass_report(kernel, tools, weights)})
    return out


def _tools_present() -> bool:
    try:
        import triton
    except ImportError:
        return False
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return (bin_dir / "ptxas").exists() and (bin_dir / "cuobjdump").exists()


@pytest.mark.skipif(not _tools_present(), reason="needs triton's CUDA backend (ptxas, cuobjdump), Linux x86-64")
def test_kernels_compile_for_sm90_and_the_decode_path_needs_no_conversions():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, do not interpret
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(r["kernel"], r["bits"]) for r in report] == [(v[0], v[1]) for v in VARIANTS]
    for r in report:
        assert r["spill_bytes"] == 0 and r["registers"] <= 255, r
        if r["kernel"] == "gemv":  # M = 1: codes become floats by bit tricks, a handful of instructions each
            assert r["conversions"] == 0 and r["per_weight"] < 6.5, r


if __name__ == "__main__":
    print(json.dumps(compile_report()))
