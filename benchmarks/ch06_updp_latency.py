"""Where UPDP's speed comes from: baseline → norm swap → activation removal → merge, timed in one interleaved run.

Four forms of the same network, batch 128, each timed in turn round after round
(:func:`minillm.core.bench.interleaved_timings`), so a burst of load from other processes hits all four alike:

* ``baseline``            every block full (LayerNorm / GroupNorm, GELU inside);
* ``norm_swap``           the pruned blocks at λ = 0: LN/GN → BN, a BN and a GELU added after the block, GELU kept;
* ``activation_removed``  the pruned blocks at λ = 1, unmerged: the GELU inside the block is gone;
* ``merged``              the pruned blocks folded into one ``conv → GELU`` (ViT: ``FC → GELU``).

The three steps between them split the gain, on the wall clock and on the process's CPU clock (which load from other
programs on a shared machine inflates less; on a GPU only the wall clock means anything). Latency does not depend on the weight values, so every model is
built from the profile's preset with seeded random weights and calibrated BN statistics; the pruned blocks are
the preset's ``pruned_blocks``, spread evenly over the depth (any subnet pruning as many blocks has the same
layers, so it costs the same). The merged model is checked equal to the unmerged subnet first. Every thread
count in ``--threads`` is measured (the chapter's notebooks run 1 or 2); CPU time is recorded beside wall time.

    .venv/bin/python benchmarks/ch06_updp_latency.py                # CPU (or the GPU when one is present)
    MINILLM_PROFILE=full .venv/bin/python benchmarks/ch06_updp_latency.py

Writes ``benchmarks/results/ch06_updp_latency-<profile>-<cpu|cuda>.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch

from minillm.core.bench import interleaved_timings, results_path, write_results
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device, seed_everything
from minillm.prune import UPDP_FULL, UPDP_TINY, ResCNN, TinyViT, count_layers, recalibrate_bn

NAME = "ch06_updp_latency"
VARIANTS = ("baseline", "norm_swap", "activation_removed", "merged")
STEPS = {"norm_swap": ("baseline", "norm_swap"), "activation_removal": ("norm_swap", "activation_removed"),
         "merge": ("activation_removed", "merged")}


def spread_mask(n: int, k: int) -> tuple[bool, ...]:
    """``k`` pruned blocks spread evenly over ``n`` (latency only depends on how many)."""
    picks = {round(i * (n - 1) / max(1, k - 1)) for i in range(k)} if k > 1 else {0}
    return tuple(i in picks for i in range(n))


def build_variants(make, cfg, k: int, x: torch.Tensor) -> tuple[dict[str, torch.nn.Module], float]:
    """The four forms of one network (same weights), and the merge's relative error against the subnet."""
    seed_everything(0)
    baseline = make(cfg)
    baseline.set_subnet(spread_mask(baseline.num_blocks, k))
    baseline.set_lambda(1.0)
    recalibrate_bn(baseline, x, batches=2)  # every BN, full and pruned forms, gets real statistics
    baseline.eval()
    variants = {}
    for name, pruned, lam in (("baseline", False, 0.0), ("norm_swap", True, 0.0), ("activation_removed", True, 1.0)):
        model = copy.deepcopy(baseline)
        model.set_subnet(spread_mask(model.num_blocks, k) if pruned else (False,) * model.num_blocks)
        model.set_lambda(lam)
        variants[name] = model.eval()
    variants["merged"] = variants["activation_removed"].merged()
    with torch.no_grad():
        ref = variants["activation_removed"](x)
        err = float((variants["merged"](x) - ref).abs().max() / ref.abs().max())
    if err > 1e-5:
        raise AssertionError(f"merged model differs from the subnet by {err:.2e} (relative)")
    return variants, err


def _cpu_clocked(fn, seconds: list[float]):
    def call():
        start = time.process_time()
        fn()
        seconds.append(time.process_time() - start)
    return call


def measure(make, cfg, k: int, batch: int, image: int, device: torch.device, rounds: int) -> dict:
    """Interleaved wall (and CPU) times of the four variants at the current thread count."""
    x = torch.randn(batch, 1, image, image)
    variants, err = build_variants(make, cfg, k, x)
    xd = x.to(device)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    fns = {}
    for name, model in variants.items():
        model.to(device)
        fns[name] = _cpu_clocked(lambda model=model: model(xd), cpu[name])
    with torch.inference_mode():
        timings = interleaved_timings(fns, device=device, rounds=rounds, warmup=3)
    rows = {}
    for name, model in variants.items():
        cpu_ms = sorted(cpu[name])[len(cpu[name]) // 2] * 1e3  # median CPU time per call (warm-up included)
        rows[name] = {**timings[name], "ms_per_batch": 1e3 * timings[name]["median_s"], "cpu_ms_median": cpu_ms,
                      "layers": count_layers(model, xd), "params": sum(p.numel() for p in model.parameters())}
    split, speedup = {}, {}
    for clock, key in (("wall", "ms_per_batch"), ("cpu", "cpu_ms_median")):
        whole = rows["baseline"][key] - rows["merged"][key]
        split[clock] = {step: {"ms_saved": rows[a][key] - rows[b][key], "share_of_gain": (rows[a][key] - rows[b][key]) / whole}
                        for step, (a, b) in STEPS.items()}
        speedup[clock] = rows["baseline"][key] / rows["merged"][key]
    return {"mask": list(spread_mask(variants["baseline"].num_blocks, k)), "merge_rel_err": err, "models": rows,
            "split": split, "speedup_merged_vs_baseline": speedup}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--threads", default="1,2", help="CPU thread counts to measure, comma-separated")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    profile = current_profile()
    device = pick_device(args.device)
    cfg = profile.pick(UPDP_TINY, UPDP_FULL)
    image = {"digits": 8, "fashion-mnist": 28}[cfg.data]
    threads = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [torch.get_num_threads()]
    load_before = os.getloadavg()
    by_threads = {}
    for n in threads:
        torch.set_num_threads(n)
        by_threads[str(n)] = {
            "cnn": measure(ResCNN, cfg.cnn, cfg.pruned_blocks, args.batch, image, device, args.rounds),
            "vit": measure(TinyViT, cfg.vit, max(1, cfg.vit.depth // 2), args.batch, image, device, args.rounds)}
    results = {"profile": profile.name, "batch": args.batch, "data": cfg.data, "pruned_blocks": cfg.pruned_blocks,
               "rounds": args.rounds, "load_average": {"before": load_before, "after": os.getloadavg()},
               "cnn_block": cfg.cnn.block, "threads": by_threads}
    out = results_path(NAME, profile.name, device, None if args.out is None else Path(args.out))
    path = write_results(out, results, device)
    for n, archs in by_threads.items():
        for arch, res in archs.items():
            for label, row in res["models"].items():
                print(f"{n} thr {arch:3s} {label:19s} {row['ms_per_batch']:8.3f} ms/batch (CPU {row['cpu_ms_median']:7.3f})"
                      f"  weight layers {row['layers']['weight']:3d}  all layers {row['layers']['total']:3d}")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
