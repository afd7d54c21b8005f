"""Batch 1, accumulation 16 and batch 16 over several seeds, with a learning rate tuned for batch 1 (chapter 4).

For every seed (which fixes the train/val/test split, the new head, the order of the examples and the dropout
masks) the study fine-tunes MiniLM on the movie-review sentences with each scheme of
:data:`minillm.accumulation.SCHEMES` at the learning rate chosen for batch 16 (5e-5), and batch 1 once more
at a learning rate tuned for it:

1. tuning: batch 1 on the first ``--tune-seeds`` seeds at each rate of ``--lr-grid``, scored by mean validation
   accuracy (never the test split); when the best rate is the smallest of the grid, the grid is extended
   downwards by halving until it is not (at most twice), so the choice is not an edge of the grid;
2. batch 1 at the tuned rate on every seed (the tuning runs are reused for their seeds).

Writes ``studies/results/ch04_accumulation_seeds-<profile>-<device>.json``: every run (accuracies, per-example
test correctness, losses averaged over 16 examples, wall and CPU seconds), the tuning table and the machine.
The chapter reads it; :func:`minillm.accumulation.claims.scheme_claims` turns it into paired intervals.
The file is rewritten after every run, and ``--resume`` skips the runs it already holds.

    .venv/bin/python studies/ch04_accumulation_seeds.py            # about an hour of CPU time at 1 thread
    .venv/bin/python studies/ch04_accumulation_seeds.py --quick    # the pipeline in under a minute (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from minillm.accumulation import ACCUMULATION_FULL, ACCUMULATION_TINY, SCHEMES, run_scheme
from minillm.accumulation.claims import BATCH1_TUNED
from minillm.core.bench import results_path, write_results
from minillm.core.paths import project_root
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device

NAME = "ch04_accumulation_seeds"
BASE_LR = 5e-5


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


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--tune-seeds", type=int, default=2, help="how many of the seeds score the lr grid")
    parser.add_argument("--lr-grid", type=float, nargs="+", default=[1e-5, 2e-5], help="batch-1 rates besides 5e-5")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES),
                        help="schemes run at the batch-16 rate (default: all)")
    parser.add_argument("--max-extensions", type=int, default=2, help="how often the lr grid may grow downwards")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline, proves nothing")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="keep the runs an earlier, interrupted call wrote")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = pick_device()
    cfg = current_profile().pick(ACCUMULATION_TINY, ACCUMULATION_FULL)
    if args.quick:
        cfg = replace(cfg, train_size=16, val_size=16, test_size=16, max_length=16)
    path = results_file(device, args.results_dir)
    runs: list[dict] = []
    if args.resume and path.exists():
        old = json.loads(path.read_text())
        if old.get("config") == asdict(cfg):
            runs = old["runs"]
            print(f"resuming: {len(runs)} runs already in {path}")
    started = time.time()

    def save(extra: dict | None = None) -> None:
        write_results(path, {"config": asdict(cfg), "seeds": args.seeds, "schemes": args.schemes, "base_lr": BASE_LR,
                             "threads": args.threads, "complete": False, **(extra or {}), "runs": runs}, device)

    def run(scheme_name: str, label: str, lr: float, seed: int) -> dict:
        # One training run per (scheme, lr, seed); a second label for the same run is recorded as a copy.
        same = [r for r in runs if r["trains_as"] == scheme_name and r["lr"] == lr and r["seed"] == seed]
        if same:
            if not any(r["scheme"] == label for r in same):
                runs.append({**same[0], "scheme": label})
                save()
            return same[0]
        result = run_scheme(scheme_name, replace(cfg, lr=lr, seed=seed), device, progress=False, name=label)
        runs.append({**_record(result, label), "trains_as": scheme_name})
        save()
        acc = "-" if result.test_accuracy is None else f"{result.test_accuracy:.3f}"
        print(f"[{time.time() - started:6.0f} s] seed {seed} {label:>40} lr {lr:.0e}: val "
              f"{result.val_accuracy:.3f} test {acc} ({result.seconds:.0f} s wall, {result.cpu_seconds:.0f} s CPU)",
              flush=True)
        return runs[-1]

    # 1. tune batch 1's learning rate on validation accuracy
    tune_seeds = args.seeds[: args.tune_seeds]
    grid = sorted({*args.lr_grid, BASE_LR})
    for _ in range(args.max_extensions + 1):
        table = {lr: [run("batch 1", f"batch 1, lr {lr:g}", lr, s)["val_accuracy"] for s in tune_seeds]
                 for lr in grid}
        best = max(grid, key=lambda lr: (float(np.mean(table[lr])), lr))  # a tie goes to the larger rate
        if best != grid[0]:
            break
        grid = [grid[0] / 2, *grid]  # the best rate is the grid's edge: look below it
    tuning = {"seeds": tune_seeds, "grid": grid, "val_accuracy": {f"{lr:g}": table[lr] for lr in grid},
              "tuned_lr": best}
    print(f"tuned batch-1 learning rate: {best:g} (mean validation accuracy {np.mean(table[best]):.3f})")
    # 2. every scheme at the batch-16 rate, and batch 1 at its own, on every seed
    for seed in args.seeds:
        for scheme_name in args.schemes:
            run(scheme_name, scheme_name, BASE_LR, seed)
        run("batch 1", BATCH1_TUNED, best, seed)
    cpu = sum(r["cpu_seconds"] for r in runs)
    save({"complete": True, "tuning": tuning, "total_cpu_seconds": cpu, "total_wall_seconds": time.time() - started,
          "load_note": "wall and CPU seconds were measured on a shared machine; treat them as upper bounds"})
    print(f"wrote {path} ({len(runs)} runs, {cpu / 60:.0f} min of training CPU time)")
    return path


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main(sys.argv[1:])
