"""Benchmark: Triton low-bit matmul vs torch fp16 on a GPU, as achieved memory bandwidth.

For each weight shape (K, N) in 4096x4096, 4096x11008, 11008x4096 and M in (1, 16) rows of
activations it times ``x @ W`` in fp16 (cuBLAS) and ``quant_matmul`` on 4-bit and 2-bit packed
weights (group size 128, act-order ``g_idx``), and reports

    bandwidth = bytes read and written / seconds,   fraction of peak = bandwidth / copy bandwidth,

where the peak is measured with a large device-to-device copy. Each call reads a different copy of
the weight (together larger than the L2 cache), so small packed weights cannot sit in cache.
Writes benchmarks/results/quant_matmul-<profile>-cuda.json. Run:

    python benchmarks/ch05_quant_matmul_gpu.py              # needs a CUDA GPU
    python benchmarks/ch05_quant_matmul_gpu.py --dry-run    # CPU: Triton interpreter, small shapes, checks only
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

if "--dry-run" in sys.argv and not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the import of the kernel module

import torch

from minillm.core.bench import results_path, time_call, write_results
from minillm.core.profile import current_profile
from minillm.quant.packing import PackedWeight, codes_per_word, pack_cols, pack_rows

NAME = "ch05_quant_matmul_gpu"
COMMAND = f"python benchmarks/{NAME}.py"
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096)]  # (K, N) = (in, out)
DRY_SHAPES = [(256, 512), (512, 256)]
ROWS = (1, 16)
GROUPSIZE = 128
#: (block_n, block_k, split_k, num_warps) tried per shape on a GPU; the fastest is reported (a manual sweep:
#: Triton's autotuner with several configs does not run in the interpreter).
GPU_CONFIGS = [(64, 128, 1, 4), (128, 128, 1, 4), (64, 256, 1, 4), (128, 64, 4, 4), (64, 128, 4, 4), (32, 256, 8, 4),
               (64, 256, 4, 8), (128, 128, 2, 8)]
DRY_CONFIGS = [(128, 128, 1, 4), (128, 128, 2, 4)]


def random_packed(K: int, N: int, bits: int, device, dtype=torch.float16, generator=None) -> PackedWeight:
    """Random codes, scales and zero points with act-order groups (a permuted ``g_idx``)."""
    maxq = 2**bits - 1
    G = K // GROUPSIZE
    codes = torch.randint(0, maxq + 1, (K, N), generator=generator)
    zeros = torch.randint(0, maxq + 1, (G, N), generator=generator)
    scales = (torch.rand(G, N, generator=generator) * 0.01 + 0.001).to(dtype)
    g_idx = (torch.randperm(K, generator=generator) // GROUPSIZE).to(torch.int32)
    return PackedWeight(pack_rows(codes, bits), scales, pack_cols(zeros, bits), g_idx, bits).to(device)


def gpu_seconds(fn, iters: int = 200, warmup: int = 20) -> float:
    """Mean seconds per call from CUDA events around ``iters`` back-to-back calls."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def peak_copy_bandwidth(device, gib: float = 1.0) -> float:
    """Bytes/s of a large device-to-device copy (read + write) — the practical peak."""
    n = int(gib * 2**30) // 4
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    seconds = gpu_seconds(lambda: dst.copy_(src), iters=20, warmup=3)
    return 2 * n * 4 / seconds


def _rotating(make, nbytes: int, min_total: int):
    """Copies (at distinct addresses) whose total exceeds ``min_total`` bytes, and a function cycling through them."""
    copies = [make(i) for i in range(max(1, math.ceil(min_total / nbytes)))]
    state = {"i": 0}

    def next_copy():
        state["i"] = (state["i"] + 1) % len(copies)
        return copies[state["i"]]

    return copies[0], next_copy


def bench_shape(K: int, N: int, M: int, device, dry: bool, l2_defeat_bytes: int) -> dict:
    from minillm.quant.triton_matmul import quant_matmul

    dtype = torch.float32 if dry else torch.float16
    g = torch.Generator().manual_seed(K * 7 + N + M)
    x = torch.randn(M, K, generator=g).to(device, dtype)
    row = {"K": K, "N": N, "M": M}
    w_bytes = K * N * 2
    w = (torch.randn(K, N, generator=g) * 0.02).to(device, torch.float16)
    w0, next_w = _rotating(lambda i: w.clone(), w_bytes, 0 if dry else l2_defeat_bytes)
    io_bytes = (M * K + M * N) * x.element_size()
    if dry:
        fp16 = time_call(lambda: x @ w0.float(), device, warmup=1, repeats=2)["median_s"]
    else:
        fp16 = gpu_seconds(lambda: x @ next_w())
    row["fp16"] = {"seconds": fp16, "bytes": w_bytes + io_bytes, "bandwidth": (w_bytes + io_bytes) / fp16}
    for bits in (4, 2):
        p0 = random_packed(K, N, bits, device, dtype, g)
        reference = x @ p0.dequantize().to(dtype)
        q_bytes = p0.nbytes() + io_bytes
        _, next_p = _rotating(lambda i: PackedWeight(p0.qweight.clone(), p0.scales.clone(), p0.qzeros.clone(),
                                                     p0.g_idx.clone(), bits), q_bytes, 0 if dry else l2_defeat_bytes)
        best = None
        for bn, bk, sk, nw in (DRY_CONFIGS if dry else GPU_CONFIGS):
            y = quant_matmul(x, p0, block_n=bn, block_k=bk, split_k=sk, num_warps=nw)
            tol = 1e-5 if dry else 2e-2  # fp32 interpreter vs fp16 tensor cores
            err = ((y.float() - reference.float()).abs().max() / reference.float().abs().max()).item()
            if err > tol:
                raise AssertionError(f"{bits}-bit kernel differs from dequantize-then-matmul by {err:.2e} at "
                                     f"K={K} N={N} M={M} config={(bn, bk, sk, nw)}")
            if dry:
                t = time_call(lambda: quant_matmul(x, p0, bn, bk, sk, None, nw), device, warmup=0, repeats=1)["median_s"]
            else:
                t = gpu_seconds(lambda: quant_matmul(x, next_p(), bn, bk, sk, None, nw))
            if best is None or t < best["seconds"]:
                best = {"seconds": t, "config": {"block_n": bn, "block_k": bk, "split_k": sk, "num_warps": nw},
                        "max_rel_error": err}
        best.update(bytes=q_bytes, bandwidth=q_bytes / best["seconds"], speedup_vs_fp16=fp16 / best["seconds"])
        row[f"int{bits}"] = best
    return row


def run(dry: bool = False) -> dict:
    if dry:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("quant_matmul_gpu.py measures GPU memory bandwidth and needs a CUDA GPU with Triton; "
                             "this machine has none. Run it on a GPU machine, or check it here with --dry-run "
                             "(Triton interpreter, small shapes, no meaningful timings).")
        device = torch.device("cuda")
    peak = None if dry else peak_copy_bandwidth(device)
    l2 = 2**30  # 1 GiB of weight copies per call site: far beyond any L2 cache
    rows = [bench_shape(K, N, M, device, dry, l2) for K, N in (DRY_SHAPES if dry else SHAPES) for M in ROWS]
    if peak:
        for row in rows:
            for kind in ("fp16", "int4", "int2"):
                row[kind]["fraction_of_peak"] = row[kind]["bandwidth"] / peak
    results = {"benchmark": "quant_matmul_gpu", "profile": current_profile().name, "dry_run": dry,
               "groupsize": GROUPSIZE, "peak_copy_bandwidth": peak, "rows": rows}
    if not dry:
        target = next(r for r in rows if (r["K"], r["N"], r["M"]) == (4096, 11008, 1))
        results["bar"] = {"int4_speedup_at_4096x11008_M1": target["int4"]["speedup_vs_fp16"], "required": 2.5,
                          "met": target["int4"]["speedup_vs_fp16"] >= 2.5}
    return results


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU check in the Triton interpreter at small shapes")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--dry-run needs TRITON_INTERPRET=1 before the kernel module is imported; "
                         "run it as a script or set the variable first")
    results = run(dry=args.dry_run)
    device = "cpu" if args.dry_run else "cuda"
    path = args.out or results_path(NAME + ("-dryrun" if args.dry_run else ""), results["profile"], device)
    write_results(path, results, device)
    for r in results["rows"]:
        print(f"K={r['K']:>5} N={r['N']:>5} M={r['M']:>2}  fp16 {r['fp16']['seconds'] * 1e6:9.1f} us  "
              f"int4 {r['int4']['seconds'] * 1e6:9.1f} us (x{r['int4']['speedup_vs_fp16']:.2f})  "
              f"int2 {r['int2']['seconds'] * 1e6:9.1f} us (x{r['int2']['speedup_vs_fp16']:.2f})")
    if results.get("peak_copy_bandwidth"):
        print(f"peak copy bandwidth {results['peak_copy_bandwidth'] / 1e9:.0f} GB/s; bar: {results['bar']}")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
