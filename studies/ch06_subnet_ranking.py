"""Chapter 6 study: every subnet of the search space fine-tuned over several seeds (the paper's Table 5, exhaustively).

For each seed: baseline → supernet → fitness of all C(n, k) subnets → genetic search → progressive and direct
fine-tuning of every subnet from the baseline. Writes the raw numbers and the summary (Spearman of fitness
against fine-tuned accuracy, where the search's pick lands, progressive − direct), with intervals over seeds, to
``studies/results/ch06_subnet_ranking-<profile>-<device>.json``.

    .venv/bin/python studies/ch06_subnet_ranking.py                 # tiny profile: 5 seeds, ~4 min of CPU each at 1 thread
    .venv/bin/python studies/ch06_subnet_ranking.py --resume         # keep the seeds already saved, run the rest
    .venv/bin/python studies/ch06_subnet_ranking.py --workers 3      # three seeds at a time, one process each
    .venv/bin/python studies/ch06_subnet_ranking.py --quick --out /tmp/x   # the test's 2-seed miniature

Results are saved after every seed, so a run stopped part-way (a shared machine, a laptop lid) loses at most
the seed in progress; ``--resume`` reuses the saved seeds when the saved configuration is the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from minillm.core.bench import results_path, write_results
from minillm.core.claims import run_seeds
from minillm.core.paths import project_root
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device
from minillm.data.images import load_image_data
from minillm.prune import (UPDP_FULL, UPDP_TINY, ImageTrainConfig, ResCNN, SearchConfig, SubnetStudyConfig,
                           run_subnet_study, study_seed, summarise_subnet_study)

NAME = "ch06_subnet_ranking"
QUICK_CNN = dict(channels=8, expand=32, depth=4)  # C(4, 2) = 6 subnets


def study_config(quick: bool, seeds: int | None) -> SubnetStudyConfig:
    profile = current_profile()
    updp = profile.pick(UPDP_TINY, UPDP_FULL)
    if quick:
        short = ImageTrainConfig(epochs=1, batch_size=128, lr=3e-3)
        updp = dataclasses.replace(updp, cnn=dataclasses.replace(updp.cnn, **QUICK_CNN), pruned_blocks=2,
                                   baseline=dataclasses.replace(short, epochs=2), supernet=short, subnet=short,
                                   search=SearchConfig(population=3, generations=2, elite=2),
                                   train_examples=256, eval_examples=128, calib_batches=1)
    cfg = SubnetStudyConfig(updp, seeds=seeds or (2 if quick else 5))
    return profile.pick(cfg, cfg)  # smoke caps apply under MINILLM_SMOKE=1


def previous_seeds(path: Path, cfg: SubnetStudyConfig) -> tuple[list[dict], dict[str, float]]:
    """The seeds a stopped run of the same configuration saved (at most ``cfg.seeds``), and its time so far."""
    if not path.exists():
        return [], {"wall_s": 0.0, "cpu_s": 0.0}
    saved = json.loads(path.read_text())
    mine = dataclasses.asdict(cfg)
    if {k: v for k, v in saved["config"].items() if k != "seeds"} != {k: v for k, v in mine.items() if k != "seeds"}:
        raise SystemExit(f"{path} was written with another configuration; move it away or run without --resume.")
    runs = saved["seeds"][:cfg.seeds]
    expected = list(range(cfg.first_seed, cfg.first_seed + len(runs)))
    if [r["seed"] for r in runs] != expected:
        raise SystemExit(f"{path} holds seeds {[r['seed'] for r in runs]}, expected {expected}; run without --resume.")
    return runs, {"wall_s": saved["wall_s"], "cpu_s": saved["cpu_s"]}


def one_seed(data, updp, seed: int, threads: int, device) -> tuple[dict, float]:
    """One seed in a worker process: its results and the CPU seconds the worker spent on it."""
    torch.set_num_threads(threads)
    start = time.process_time()
    run = study_seed(data, updp, seed, lambda: ResCNN(updp.cnn).to(device))
    return run, time.process_time() - start


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds of a 4-block CNN, 1 epoch per stage")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 5; 2 with --quick)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default studies/results)")
    parser.add_argument("--resume", action="store_true", help="reuse the seeds an earlier run of this config saved")
    parser.add_argument("--workers", type=int, default=1, help="seeds run at the same time, one process each")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    profile, device = current_profile(), pick_device()
    cfg = study_config(args.quick, args.seeds)
    data = cfg.updp.prepare(load_image_data(cfg.updp.data))
    out = args.out or (project_root() or Path.cwd()) / "studies" / "results"
    path = results_path(NAME, profile.name + ("-quick" if args.quick else ""), device, out)
    done, spent = previous_seeds(path, cfg) if args.resume else ([], {"wall_s": 0.0, "cpu_s": 0.0})
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    worker_cpu = {"s": 0.0}  # CPU seconds of the worker processes (--workers > 1)

    def save(runs: list[dict], complete: bool = False) -> None:
        runs = done + runs
        payload = {"profile": profile.name, "quick": args.quick, "complete": complete, "threads": args.threads,
                   "data": data.describe(), "config": dataclasses.asdict(cfg),
                   "wall_s": spent["wall_s"] + time.perf_counter() - start_wall,
                   "cpu_s": spent["cpu_s"] + time.process_time() - start_cpu + worker_cpu["s"],
                   "load_average": os.getloadavg(), "seeds": runs}
        if len(runs) >= 2:
            payload["summary"] = summarise_subnet_study(runs)
        write_results(path, payload, device)

    missing = cfg.seeds - len(done)
    runs = []
    if args.workers > 1 and missing >= 2:
        seeds = list(range(cfg.first_seed + len(done), cfg.first_seed + cfg.seeds))
        with ProcessPoolExecutor(min(args.workers, missing), mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {s: pool.submit(one_seed, data, cfg.updp, s, args.threads, device) for s in seeds}

            def collect(seed: int) -> dict:  # in seed order, saved as soon as it and every seed before it are done
                run, cpu = futures[seed].result()
                worker_cpu["s"] += cpu
                runs.append(run)
                save(list(runs))
                return run

            run_seeds(collect, seeds)
    elif missing >= 2:  # run_seeds needs two or more; a single missing seed runs on its own
        rest = dataclasses.replace(cfg, seeds=missing, first_seed=cfg.first_seed + len(done))
        runs = run_subnet_study(data, rest, make_model=lambda: ResCNN(cfg.updp.cnn).to(device), on_seed=save)
    elif missing == 1:
        runs = [study_seed(data, cfg.updp, cfg.first_seed + len(done), lambda: ResCNN(cfg.updp.cnn).to(device))]
    save(runs, complete=True)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
