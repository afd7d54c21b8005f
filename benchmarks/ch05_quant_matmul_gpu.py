"""Benchmark: Triton low-bit matmul against fp16 torch.matmul on a GPU, as a share of the copy bandwidth.

For weight shapes (K, N) = 4096x11008 (first: the headline), 4096x4096 and 11008x4096, M = 1 (decode) and 16
rows of activations, it times fp16 ``x @ W`` (both weight layouts, the faster counts) and ``quant_matmul`` on
4-, 3- and 2-bit packed weights (group size 128, act-order ``g_idx``, regrouped at load time), trying every
launch configuration of ``GEMV_CONFIGS`` (M = 1) or ``GEMM_CONFIGS`` (M > 1) and recording each one's time:

    bandwidth = bytes the call must move / seconds,   fraction_of_peak = bandwidth / measured copy bandwidth,

where the copy bandwidth comes from a 1 GiB device-to-device copy (read + write). Calls are timed inside a CUDA
graph (what a decoder would replay), cycling through copies of the weight that together exceed 3x the L2 cache,
so a small packed weight cannot sit in cache; the best configuration is also timed without the graph
(``eager_seconds``) and, at 4 bits, on a layer without act-order (``natural_order_seconds``). Each output is
checked against dequantize-then-matmul before it is timed. The file is rewritten after every row, so a run cut
short keeps what it measured. Writes benchmarks/results/ch05_quant_matmul_gpu-<profile>-cuda.json. Run:

    python benchmarks/ch05_quant_matmul_gpu.py              # needs a CUDA GPU
    python benchmarks/ch05_quant_matmul_gpu.py --dry-run    # CPU: Triton interpreter, small shapes, checks only
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

if "--dry-run" in sys.argv and not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the import of the kernel module

import torch

from minillm.core.bench import results_path, write_results
from minillm.core.profile import current_profile
from minillm.quant.packing import PackedWeight, pack_cols, pack_rows

NAME = "ch05_quant_matmul_gpu"
SHAPES = [(4096, 11008), (4096, 4096), (11008, 4096)]  # (K, N) = (in, out); the first is the headline
DRY_SHAPES = [(256, 256)]  # K = 2 groups, N = 2 column tiles: the interpreter is slow
ROWS = (1, 16)
BITS = (4, 3, 2)
GROUPSIZE = 128
GOAL = {"K": 4096, "N": 11008, "M": 1, "bits": 4, "speedup_vs_fp16": 2.5, "fraction_of_peak": 0.70}


def random_packed(K: int, N: int, bits: int, device, dtype=torch.float16, generator=None,
                  act_order: bool = True) -> PackedWeight:
    """Random codes, scales and zero points, made on ``device``; act-order groups (a permuted ``g_idx``) by default."""
    device = torch.device(device)
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    maxq = 2**bits - 1
    G = K // GROUPSIZE
    opts = dict(generator=generator, device=device)
    codes = torch.randint(0, maxq + 1, (K, N), **opts)
    zeros = torch.randint(0, maxq + 1, (G, N), **opts)
    scales = (torch.rand(G, N, **opts) * 0.01 + 0.001).to(dtype)
    rows = torch.randperm(K, **opts) if act_order else torch.arange(K, device=device)
    g_idx = (rows // GROUPSIZE).to(torch.int32)
    return PackedWeight(pack_rows(codes, bits), scales, pack_cols(zeros, bits), g_idx, bits)


def graph_seconds(calls: list, replays: int = 10) -> float:
    """Seconds per call when ``calls`` are captured once in a CUDA graph and the graph is replayed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (compilation, allocations) outside the capture
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / (replays * len(calls))


def eager_seconds(calls: list, rounds: int = 5) -> float:
    """Seconds per call launched one by one from Python (launch overhead included)."""
    for call in calls:
        call()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(rounds):
        for call in calls:
            call()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / (rounds * len(calls))


def copy_bandwidth(device, gib: float = 1.0) -> float:
    """Bytes/s of a large device-to-device copy (read + write): the practical peak for a streaming kernel."""
    n = int(gib * 2**30) // 4
    src, dst = torch.empty(n, device=device), torch.empty(n, device=device)
    return 2 * n * 4 / eager_seconds([lambda: dst.copy_(src)] * 4)


def cpu_seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _copies(make, nbytes: int, min_total: int) -> list:
    return [make() for _ in range(max(1, math.ceil(min_total / max(nbytes, 1))))]


def _calls(fn, copies: list, count: int) -> list:
    return [(lambda c=copies[i % len(copies)]: fn(c)) for i in range(count)]


def _error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref).abs().max() / ref.abs().max()).item()


def shape_rows(K: int, N: int, device, dry: bool, l2_bytes: int, bits_list=BITS, failures: list | None = None):
    """Rows (one per M) for one weight shape; the packed weights are built once, on the device, at load time."""
    dtype = torch.float32 if dry else torch.float16  # the interpreter has no fast fp16 matmul
    g = torch.Generator(device=device).manual_seed(K * 7 + N)
    weights = {f"int{b}": random_packed(K, N, b, device, dtype, g).for_kernel() for b in bits_list}
    if 4 in bits_list:
        weights["int4_natural"] = random_packed(K, N, 4, device, dtype, g, act_order=False).for_kernel()
    for M in ROWS:
        yield bench_row(K, N, M, device, dry, l2_bytes, weights, dtype, failures if failures is not None else [])


def bench_row(K: int, N: int, M: int, device, dry: bool, l2_bytes: int, weights: dict, dtype, failures: list) -> dict:
    from minillm.quant import triton_matmul as tm

    g = torch.Generator(device=device).manual_seed(K * 7 + N + M)
    x = torch.randn(M, K, generator=g, device=device).to(dtype)
    io_bytes = (M * K + M * N) * x.element_size()
    row = {"K": K, "N": N, "M": M}
    w = (torch.randn(K, N, generator=g, device=device) * 0.02).to(dtype)
    fp16 = {}
    for layout, weight, fn in (("x @ W (K, N)", w, lambda c: x @ c), ("F.linear (N, K)", w.T.contiguous(),
                                                                        lambda c: torch.nn.functional.linear(x, c))):
        if dry:
            fp16[layout] = cpu_seconds(lambda: fn(weight))
        else:
            fp16[layout] = graph_seconds(_calls(fn, _copies(weight.clone, K * N * 2, 3 * l2_bytes), 16))
    del w
    best_fp16 = min(fp16.values())
    row["fp16"] = {"seconds": best_fp16, "layouts": fp16, "bytes": K * N * x.element_size() + io_bytes}
    row["fp16"]["bandwidth"] = row["fp16"]["bytes"] / best_fp16
    configs = (tm.GEMV_CONFIGS if M == 1 else tm.GEMM_CONFIGS)[: 2 if dry else None]
    tol = 1e-5 if dry else 1e-2  # fp32 interpreter; fp16 inputs and outputs (and tensor cores) on a GPU
    for kind, kw in weights.items():
        if kind == "int4_natural":
            continue
        ref = x.float() @ kw.dequantize().float()
        copies = _copies(lambda: _clone(kw), kw.nbytes(), 0 if dry else 3 * l2_bytes)
        tried = []
        for cfg in configs:
            entry = {"config": asdict(cfg)}
            try:
                entry["seconds"], entry["max_rel_error"] = _time_config(tm, x, kw, cfg, copies, ref, dry)
                if entry["max_rel_error"] > tol:
                    entry["error"] = f"differs from dequantize-then-matmul by {entry['max_rel_error']:.2e} (> {tol})"
            except Exception as err:  # a config the device cannot run (resources) must not end the benchmark
                entry["error"] = f"{type(err).__name__}: {err}"[:500]
            if "error" in entry:
                failures.append({"K": K, "N": N, "M": M, "kind": kind, **entry})
                print(f"   {kind} K={K} N={N} M={M} {cfg}: {entry['error']}", flush=True)
            tried.append(entry)
        good = [e for e in tried if "error" not in e]
        if not good:
            row[kind] = {"configs": tried, "error": "no configuration ran correctly"}
            continue
        best = min(good, key=lambda r: r["seconds"])
        moved = kw.nbytes() + io_bytes  # the least a call must move: weight, grid, row_index, x and y, once each
        result = {"seconds": best["seconds"], "config": best["config"], "max_rel_error": best["max_rel_error"],
                  "bytes": moved, "bandwidth": moved / best["seconds"], "speedup_vs_fp16": best_fp16 / best["seconds"],
                  "configs": tried}
        best_cfg = tm.KernelConfig(**best["config"])
        if not dry:
            result["eager_seconds"] = eager_seconds(_calls(lambda c: tm.quant_matmul(x, c, config=best_cfg), copies, 16))
        if kind == "int4" and "int4_natural" in weights:  # the same layer without act-order: what the gather costs
            nat = weights["int4_natural"]
            nat_copies = _copies(lambda: _clone(nat), nat.nbytes(), 0 if dry else 3 * l2_bytes)
            nat_ref = x.float() @ nat.dequantize().float()
            result["natural_order_seconds"] = _time_config(tm, x, nat, best_cfg, nat_copies, nat_ref, dry)[0]
        row[kind] = result
        del copies
    return row


def _clone(kw):
    from minillm.quant.kernel_layout import KernelWeight

    idx = kw.row_index.clone() if kw.row_index is not None else None
    return KernelWeight(kw.qweight.clone(), kw.scales.clone(), kw.zeros.clone(), idx, kw.bits, kw.group_rows,
                        kw.in_features)


def _time_config(tm, x, kw, cfg, copies, ref, dry) -> tuple[float, float]:
    """(seconds per call, max relative error against dequantize-then-matmul) of one launch configuration."""
    if dry:  # the interpreter: the checking call is the timed one
        start = time.perf_counter()
        y = tm.quant_matmul(x, kw, config=cfg)
        return time.perf_counter() - start, _error(y, ref)
    err = _error(tm.quant_matmul(x, kw, config=cfg), ref)
    return graph_seconds(_calls(lambda c: tm.quant_matmul(x, c, config=cfg), copies, 32)), err


def _compile_job(job: tuple) -> tuple:
    """Compile (by running once, on a small layer) one kernel variant, so the timed runs find it in Triton's cache.

    Loop counts are not specialised on and a small layer keeps every other argument's alignment class, so the
    variant compiled here is the one the real shapes use."""
    bits, M, cfg, act_order, device = job
    from minillm.quant import triton_matmul as tm

    start = time.perf_counter()
    try:
        dtype = torch.float16 if device == "cuda" else torch.float32
        kw = random_packed(256, 256, bits, device, dtype, act_order=act_order).for_kernel()
        tm.quant_matmul(torch.randn(M, 256, device=device, dtype=dtype), kw, config=tm.KernelConfig(**cfg))
        if device == "cuda":
            torch.cuda.synchronize()
        return job, time.perf_counter() - start, None
    except Exception as err:  # the timed run will meet (and record) the same problem
        return job, time.perf_counter() - start, f"{type(err).__name__}: {err}"[:300]


def precompile(bits_list, workers: int, timeout: float = 240.0, device: str = "cuda") -> dict:
    """Compile every variant the benchmark will launch in ``workers`` processes at once (Triton compiles one kernel
    at a time per process; ~45 variants would otherwise take minutes of GPU-machine time)."""
    from concurrent.futures import ProcessPoolExecutor, wait
    from multiprocessing import get_context

    from minillm.quant import triton_matmul as tm

    jobs = [(b, M, asdict(c), True, device) for b in bits_list
            for M, cs in ((1, tm.GEMV_CONFIGS), (16, tm.GEMM_CONFIGS)) for c in cs]
    if 4 in bits_list:  # the natural-order comparison: any non-gathering variant may be the best one
        jobs += [(4, M, asdict(c), False, device) for M, cs in ((1, tm.GEMV_CONFIGS), (16, tm.GEMM_CONFIGS))
                 for c in cs if not c.pregather]
    start = time.perf_counter()
    report = {"workers": workers, "jobs": len(jobs), "finished": 0, "failed": []}
    try:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        futures = [pool.submit(_compile_job, job) for job in jobs]
        done, pending = wait(futures, timeout=timeout)
        pool.shutdown(wait=not pending, cancel_futures=True)
        for f in done:
            job, _, error = f.result() if f.exception() is None else (None, 0, repr(f.exception()))
            report["finished"] += 1
            if error:
                report["failed"].append({"job": job, "error": error})
    except Exception as err:  # compiling first is an optimisation: the timed runs compile what is missing
        report["error"] = f"{type(err).__name__}: {err}"[:500]
    report["seconds"] = time.perf_counter() - start
    return report


def device_facts(device) -> dict:
    import triton

    facts = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        facts.update(name=p.name, sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                     l2_bytes=getattr(p, "L2_cache_size", None), capability=f"{p.major}.{p.minor}")
    return facts


def run(dry: bool = False, out: Path | None = None, shapes=None, bits_list=BITS, workers: int = 0) -> dict:
    if dry:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit(f"{NAME}.py measures GPU memory bandwidth and needs a CUDA GPU with Triton; this machine "
                             "has none. Run it on a GPU machine, or check it here with --dry-run (Triton interpreter, "
                             "small shapes, no meaningful timings).")
        device = torch.device("cuda")
    facts = device_facts(device)
    compiled = precompile(bits_list, workers) if workers and not dry else None
    peak = None if dry else copy_bandwidth(device)
    l2 = facts.get("l2_bytes") or 64 * 2**20
    results = {"benchmark": NAME, "profile": current_profile().name, "dry_run": dry, "groupsize": GROUPSIZE,
               "device_facts": facts, "precompile": compiled, "peak_copy_bandwidth": peak, "goal": GOAL, "rows": []}
    path = out or results_path(NAME + ("-dryrun" if dry else ""), results["profile"], device)
    failures = results["failures"] = []
    for K, N in shapes or (DRY_SHAPES if dry else SHAPES):
        for row in shape_rows(K, N, device, dry, l2, bits_list, failures):
            for kind in ["fp16"] + [f"int{b}" for b in bits_list]:
                if "bandwidth" in row[kind]:
                    row[kind]["fraction_of_peak"] = row[kind]["bandwidth"] / peak if peak else None
            results["rows"].append(row)
            r = row.get(f"int{GOAL['bits']}", {})
            if not dry and (row["K"], row["N"], row["M"]) == (GOAL["K"], GOAL["N"], GOAL["M"]) and "seconds" in r:
                results["goal_result"] = {"speedup_vs_fp16": r["speedup_vs_fp16"], "fraction_of_peak": r["fraction_of_peak"],
                                          "reached": bool(r["speedup_vs_fp16"] >= GOAL["speedup_vs_fp16"]
                                                          and r["fraction_of_peak"] >= GOAL["fraction_of_peak"])}
            write_results(path, results, device)  # after every row: a run cut short keeps what it measured
            print(_describe(row, bits_list, dry), flush=True)
    results["path"] = str(path)
    return results


def _describe(r: dict, bits_list, dry: bool) -> str:
    text = f"K={r['K']:>5} N={r['N']:>5} M={r['M']:>2}" + ("" if dry else f"  fp16 {r['fp16']['seconds'] * 1e6:8.1f} us")
    for b in bits_list:
        q = r[f"int{b}"]
        if "error" in q:
            text += f"  int{b} FAILED"
        elif dry:  # interpreter timings mean nothing
            text += f"  int{b} max rel. error {q['max_rel_error']:.1e}"
        else:
            text += f"  int{b} {q['seconds'] * 1e6:7.1f} us (x{q['speedup_vs_fp16']:.2f}, {q['fraction_of_peak']:.0%} of copy)"
    return text


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU check in the Triton interpreter at small shapes")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: benchmarks/results/...)")
    parser.add_argument("--bits", type=int, nargs="*", default=list(BITS), help="code widths to measure")
    parser.add_argument("--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 2)),
                        help="processes compiling the kernel variants in parallel first (GPU only; 0: none)")
    args = parser.parse_args(argv)
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--dry-run needs TRITON_INTERPRET=1 before the kernel module is imported; "
                         "run it as a script or set the variable first")
    results = run(dry=args.dry_run, out=args.out, bits_list=tuple(args.bits), workers=args.workers)
    if results.get("peak_copy_bandwidth"):
        print(f"copy bandwidth {results['peak_copy_bandwidth'] / 1e9:.0f} GB/s; goal at 4096x11008, M=1, 4 bits: "
              f"{results.get('goal_result')}")
    print(f"wrote {results['path']}")
    if results["failures"]:  # measured what it could, but a configuration failed or was wrong: say so
        print(f"{len(results['failures'])} configuration(s) failed; see 'failures' in the file", file=sys.stderr)
        raise SystemExit(1)
    return Path(results["path"])


if __name__ == "__main__":
    main()
