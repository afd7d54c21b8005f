"""Chapter 6 study: every subnet of the search space fine-tuned over several seeds (the paper's Table 5, exhaustively).

For each seed: baseline → supernet → fitness of all C(n, k) subnets → genetic search → progressive and direct
fine-tuning of every subnet from the baseline. Writes the raw numbers and the summary (Spearman of fitness
against fine-tuned accuracy, where the search's pick lands, progressive − direct), with intervals over seeds, to
``studies/results/ch06_subnet_ranking-<profile>-<device>.json``.

    .venv/bin/python studies/ch06_subnet_ranking.py                 # tiny profile: 8 seeds, ~35 min at 1 thread
    .venv/bin/python studies/ch06_subnet_ranking.py --quick --out /tmp/x   # the test's 2-seed miniature
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import torch

from minillm.core.bench import results_path, write_results
from minillm.core.paths import project_root
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device
from minillm.data.images import load_image_data
from minillm.prune import (UPDP_FULL, UPDP_TINY, ImageTrainConfig, ResCNN, SearchConfig, SubnetStudyConfig,
                           run_subnet_study, summarise_subnet_study)

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
    cfg = SubnetStudyConfig(updp, seeds=seeds or (2 if quick else 8))
    return profile.pick(cfg, cfg)  # smoke caps apply under MINILLM_SMOKE=1


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds of a 4-block CNN, 1 epoch per stage")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 8; 2 with --quick)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="results folder (default studies/results)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    profile, device = current_profile(), pick_device()
    cfg = study_config(args.quick, args.seeds)
    data = cfg.updp.prepare(load_image_data(cfg.updp.data))
    out = args.out or (project_root() or Path.cwd()) / "studies" / "results"
    path = results_path(NAME, profile.name + ("-quick" if args.quick else ""), device, out)
    start_wall, start_cpu = time.perf_counter(), time.process_time()

    def save(runs: list[dict], complete: bool = False) -> None:
        payload = {"profile": profile.name, "quick": args.quick, "complete": complete, "threads": args.threads,
                   "data": data.describe(), "config": dataclasses.asdict(cfg),
                   "wall_s": time.perf_counter() - start_wall, "cpu_s": time.process_time() - start_cpu,
                   "load_average": os.getloadavg(), "seeds": runs}
        if len(runs) >= 2:
            payload["summary"] = summarise_subnet_study(runs)
        write_results(path, payload, device)

    runs = run_subnet_study(data, cfg, make_model=lambda: ResCNN(cfg.updp.cnn).to(device), on_seed=save)
    save(runs, complete=True)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
