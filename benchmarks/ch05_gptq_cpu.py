"""Benchmark: GPTQ vs its straightforward reference on a 4096x4096 layer, and OBQ vs GPTQ time against size.

1. The bar: GPTQ (lazy blocks of 128 + Cholesky) and the straightforward algorithm (column by column,
   explicit inverse-Hessian downdates) quantize the same 4096x4096 layer to 4 bits in one run; their
   layer errors must agree (at this size float32 downdates flip a few roundings, so the weights differ
   slightly), and GPTQ must take at most 1.5x the reference's time.
2. The curve: seconds to quantize a d x d layer with OBQ (greedy, O(d^4)), the reference and GPTQ, and
   the layer error each reaches.

Writes benchmarks/results/gptq_cpu-<profile>-cpu.json. Run:

    python benchmarks/ch05_gptq_cpu.py                 # several minutes: the straightforward 4096 run dominates
    python benchmarks/ch05_gptq_cpu.py --bar-size 256  # quick check (tests)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from minillm.core.bench import results_path, write_results
from minillm.core.profile import current_profile
from minillm.quant.gptq import gptq_quantize, gptq_reference
from minillm.quant.hessian import layer_error
from minillm.quant.obq import obq_quantize
from minillm.quant.rtn import rtn_quantize

NAME = "ch05_gptq_cpu"
COMMAND = f"python benchmarks/{NAME}.py"
CURVE_SIZES = {"tiny": (32, 48, 64, 96, 128, 192), "full": (32, 64, 128, 256, 384, 512)}
BAR_RATIO = 1.5


def synthetic_layer(d_out: int, d_in: int, seed: int = 0, rank: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight (d_out, d_in) and a Hessian from inputs with unequal feature scales and correlated directions,
    as transformer activations have (a few large channels, low-rank structure)."""
    g = torch.Generator().manual_seed(seed)
    n = max(2 * d_in, 256)
    scales = torch.exp(torch.randn(d_in, generator=g))  # log-normal per-feature scale
    X = torch.randn(n, d_in, generator=g) * scales + torch.randn(n, rank, generator=g) @ torch.randn(rank, d_in, generator=g)
    H = 2.0 / n * (X.T @ X)  # (d_in, d_in)
    W = torch.randn(d_out, d_in, generator=g) * 0.02
    return W, H


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def bar(size: int, bits: int = 4) -> dict:
    W, H = synthetic_layer(size, size, seed=1)
    (Qg, _), t_gptq = timed(gptq_quantize, W, H, bits, blocksize=128)
    (Qr, _), t_ref = timed(gptq_reference, W, H, bits)
    rel = ((Qg - Qr).norm() / Qg.norm()).item()
    err_g, err_r, err_rtn = layer_error(W, Qg, H), layer_error(W, Qr, H), layer_error(W, rtn_quantize(W, bits)[0], H)
    return {"size": size, "bits": bits, "gptq_seconds": t_gptq, "reference_seconds": t_ref,
            "ratio_gptq_over_reference": t_gptq / t_ref, "required_ratio_at_most": BAR_RATIO,
            "met": t_gptq <= BAR_RATIO * t_ref, "relative_difference": rel,
            "layer_error": {"gptq": err_g, "reference": err_r, "rtn": err_rtn}}


def curve(sizes, bits: int = 4) -> list[dict]:
    rows = []
    for d in sizes:
        W, H = synthetic_layer(d, d, seed=d)
        (Qo, _), t_obq = timed(obq_quantize, W, H, bits, order="greedy")
        (Qr, _), t_ref = timed(gptq_reference, W, H, bits)
        (Qg, _), t_gptq = timed(gptq_quantize, W, H, bits, blocksize=128)
        rows.append({"size": d, "obq_seconds": t_obq, "reference_seconds": t_ref, "gptq_seconds": t_gptq,
                     "layer_error": {"obq": layer_error(W, Qo, H), "gptq": layer_error(W, Qg, H),
                                     "rtn": layer_error(W, rtn_quantize(W, bits)[0], H)}})
        print(f"d={d:4d}  OBQ {t_obq:8.3f} s   reference {t_ref:7.3f} s   GPTQ {t_gptq:7.3f} s")
    return rows


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bar-size", type=int, default=4096, help="layer size for the GPTQ-vs-reference bar")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="layer sizes of the OBQ/GPTQ curve")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    profile = current_profile()
    sizes = args.sizes if args.sizes is not None else CURVE_SIZES[profile.name]
    results = {"benchmark": "gptq_cpu", "profile": profile.name, "threads": args.threads,
               "curve": curve(sizes), "bar": bar(args.bar_size)}
    b = results["bar"]
    print(f"{b['size']}x{b['size']}: GPTQ {b['gptq_seconds']:.1f} s, reference {b['reference_seconds']:.1f} s "
          f"(ratio {b['ratio_gptq_over_reference']:.3f}, bar <= {BAR_RATIO}: {'met' if b['met'] else 'NOT met'}); "
          f"results differ by {b['relative_difference']:.1e} (relative)")
    path = write_results(args.out or results_path(NAME, profile.name, "cpu"), results, "cpu")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
