"""Batch 1, accumulation 16 and batch 16 over several seeds, each with a learning rate chosen on validation (chapter 4).

A linear probe on frozen MiniLM sentence features (:mod:`minillm.accumulation.probe`): fine-tuning every weight
costs about a tenth of a CPU second per example, too much for five seeds of six schemes on a shared CPU, while
the probe trains with the same step loop, micro-batches and stepping rules in a fraction of a second. The
features are computed once; seed :math:`s` fixes the head's initialisation, the order of the examples and the
dropout masks for every scheme alike (the split is fixed, so every run is tested on the same sentences).

1. the batch of 16's rate: batch 16 at each rate of ``--base-grid`` on the first ``--tune-seeds`` seeds, scored
   by mean validation accuracy (never the test split); accumulation 16 and the reference rules use it too;
2. batch 1's own rate, the same way over ``--lr-grid``; when the best rate of a grid is its smallest or largest,
   the grid grows by a factor 3 in that direction (at most ``--max-extensions`` times), so the choice is not an
   edge of the grid;
3. every scheme of :data:`minillm.accumulation.SCHEMES` at the batch of 16's rate, and batch 1 at its own, on
   every seed (tuning runs are reused for their seeds).

Writes ``studies/results/ch04_accumulation_seeds-<profile>-<device>.json``: every run (accuracies, per-example
test correctness, losses averaged over 16 examples, wall and CPU seconds), the tuning tables and the machine.
The chapter reads it; :func:`minillm.accumulation.claims.scheme_differences` turns it into paired intervals.

    .venv/bin/python studies/ch04_accumulation_seeds.py            # a few CPU minutes at 1 thread
    .venv/bin/python studies/ch04_accumulation_seeds.py --quick    # the pipeline in seconds (tests)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from minillm.accumulation import SCHEMES
from minillm.accumulation.claims import BATCH1_TUNED
from minillm.accumulation.probe import PROBE_FULL, PROBE_TINY, probe_features, run_probe
from minillm.core.bench import results_path, write_results
from minillm.core.paths import project_root
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device

NAME = "ch04_accumulation_seeds"


def results_file(device, results_dir: Path | None = None) -> Path:
    folder = results_dir if results_dir is not None else (project_root() or Path.cwd()) / "studies" / "results"
    return results_path(NAME, current_profile().name, device, folder)


def _losses_per_16(losses: list[float], examples_per_step: int) -> list[float]:
    # Mean training loss over each 16 examples seen, so every scheme's curve has the same resolution.
    per = max(1, 16 // examples_per_step)
    x = np.asarray(losses[: len(losses) // per * per]).reshape(-1, per).mean(axis=1)
    return [round(float(v), 5) for v in x]


def _record(result, scheme_name: str) -> dict:
    run = result.as_dict()
    run["scheme"] = scheme_name
    run["loss_per_16"] = _losses_per_16(run.pop("step_losses"), result.micro_batch_size * result.accumulation_steps)
    return run


def tune(run, scheme_name: str, grid: list[float], seeds: list[int], max_extensions: int) -> dict:
    """Pick ``scheme_name``'s rate on mean validation accuracy; grow the grid while an edge wins."""
    grid = sorted(grid)
    for attempt in range(max_extensions + 1):
        table = {lr: [run(scheme_name, f"{scheme_name}, lr {lr:g}", lr, s)["val_accuracy"] for s in seeds]
                 for lr in grid}
        best = max(grid, key=lambda lr: (float(np.mean(table[lr])), lr))  # a tie goes to the larger rate
        if attempt == max_extensions or len(grid) < 2 or best not in (grid[0], grid[-1]):
            break
        grid = [float(f"{grid[0] / 3:.2g}"), *grid] if best == grid[0] else [*grid, float(f"{grid[-1] * 3:.2g}")]
    return {"seeds": seeds, "grid": grid, "val_accuracy": {f"{lr:g}": table[lr] for lr in grid}, "tuned_lr": best,
            "edge": best in (grid[0], grid[-1])}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 7])
    parser.add_argument("--tune-seeds", type=int, default=3, help="how many of the seeds score the lr grids")
    parser.add_argument("--base-grid", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="batch-16 rates")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3], help="batch-1 rates")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES),
                        help="schemes run at the batch-16 rate (default: all)")
    parser.add_argument("--max-extensions", type=int, default=2, help="how often an lr grid may grow")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline, proves nothing")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device("cpu")
    cfg = current_profile().pick(PROBE_TINY, PROBE_FULL)
    if args.quick:
        cfg = replace(cfg, train_size=32, val_size=16, test_size=16, epochs=1)
    path = results_file(device, args.results_dir)
    started, cpu_started = time.time(), time.process_time()
    features = probe_features(cfg, device)
    feature_cpu = time.process_time() - cpu_started
    print(f"features: {len(features.train)} train, {len(features.val)} val, {len(features.test)} test sentences "
          f"({feature_cpu:.0f} s CPU)", flush=True)
    runs: list[dict] = []

    def run(scheme_name: str, label: str, lr: float, seed: int) -> dict:
        # One training run per (scheme, lr, seed); a second label for the same run is recorded as a copy.
        same = [r for r in runs if r["trains_as"] == scheme_name and r["lr"] == lr and r["seed"] == seed]
        if same:
            if not any(r["scheme"] == label for r in same):
                runs.append({**same[0], "scheme": label})
            return same[0]
        result = run_probe(scheme_name, features, cfg, lr=lr, seed=seed, name=label)
        runs.append({**_record(result, label), "trains_as": scheme_name})
        return runs[-1]

    tune_seeds = args.seeds[: args.tune_seeds]
    base = tune(run, "batch 16", args.base_grid, tune_seeds, args.max_extensions)
    batch1 = tune(run, "batch 1", args.lr_grid, tune_seeds, args.max_extensions)
    print(f"rates chosen on validation: batch 16 {base['tuned_lr']:g}, batch 1 {batch1['tuned_lr']:g}", flush=True)
    for seed in args.seeds:
        for scheme_name in args.schemes:
            run(scheme_name, scheme_name, base["tuned_lr"], seed)
        run("batch 1", BATCH1_TUNED, batch1["tuned_lr"], seed)
    cpu = sum(r["cpu_seconds"] for r in runs)
    write_results(path, {"config": asdict(cfg), "model": "linear probe on frozen all-MiniLM-L6-v2 sentence features",
                         "seeds": args.seeds, "schemes": args.schemes, "base_lr": base["tuned_lr"],
                         "threads": args.threads, "complete": True, "tuning": batch1, "base_tuning": base,
                         "feature_cpu_seconds": feature_cpu, "total_cpu_seconds": cpu,
                         "total_wall_seconds": time.time() - started,
                         "load_note": "wall and CPU seconds were measured on a shared machine (under load)",
                         "runs": runs}, device)
    print(f"wrote {path} ({len(runs)} runs, {cpu:.0f} s of training CPU time, {feature_cpu:.0f} s for the features)")
    return path


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main(sys.argv[1:])
