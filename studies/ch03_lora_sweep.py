"""Study: LoRA versus full fine-tuning of MiniLM on sentence sentiment, over seeds, with a learning-rate sweep for
both methods — and why a low-rank update suffices (the SVD of full fine-tuning's weight change).

Two parts, each its own JSON (``--part``):

* ``headline`` — stage 1: full fine-tuning at 3e-5, 1e-4, 3e-4 and LoRA (r=8, alpha=16, all linear layers) at
  3e-4, 1e-3, 3e-3, seeds 0 and 1. Each method's setting with the best mean *validation* accuracy is then run with
  seeds 2, 3 and 4 too (stage 2), so the headline compares the two chosen settings over five seeds on the *test*
  split. For the seeds of stage 1 it also measures, per adapted layer, the energy of the full fine-tune's update
  in its top 8 singular directions, the overlap of that top-8 subspace with LoRA's learned update, and the test
  accuracy of the full fine-tune with each update cut to rank 8 and to rank 64.
* ``variants`` — rank and scale rule: r = 32 with alpha/r at 1e-3 and with alpha/sqrt(r) at 3.5e-4 (the rate at
  which alpha/sqrt(r) gives r = 8 the same effective step s * lr as alpha/r at 1e-3, so both rules agree at the
  headline's r = 8 run), and LoRA at 1e-3 with a mean-pooling head instead of [CLS] -> pooler; two seeds each
  (compared with the headline's r = 8 runs of the same seeds).

The sizes fit a 2-core machine shared with other jobs. Every run uses the chapter's tiny fine-tuning preset
(60 steps of 16 sentences):

    python studies/ch03_lora_sweep.py --part headline --jobs 3   # ~12 min CPU in all
    python studies/ch03_lora_sweep.py --part variants --jobs 3   # ~6 min CPU in all
    python studies/ch03_lora_sweep.py --part headline --quick --out /tmp/x   # the test's few-second version

Writes ``studies/results/ch03_lora_sweep_<part>-<profile>-<device>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from minillm.core.bench import results_path, write_results  # noqa: E402
from minillm.core.profile import current_profile, smoke_capped  # noqa: E402
from minillm.lora.finetune import CLASSIFIER_FINETUNE_FULL, CLASSIFIER_FINETUNE_TINY  # noqa: E402
from minillm.lora.lowrank import (energy_captured, overlap, top_singular_vectors, truncate_updates,  # noqa: E402
                                  weight_updates)
from minillm.lora.sweep import ClassifierSetting, best_setting, run_setting  # noqa: E402
from minillm.data.text_classification import evaluate_text_classifier  # noqa: E402
from minillm.pretrained import load_minilm_classifier  # noqa: E402


def own_session() -> None:
    """Start each worker in its own session: on Linux with autogroup scheduling, the CPU is shared between
    sessions, so workers that stay in their parent's session would split one share between them."""
    try:
        os.setsid()
    except OSError:
        pass


NAME = "ch03_lora_sweep"
RESULTS = ROOT / "studies" / "results"
FULL_LRS = (3e-5, 1e-4, 3e-4)
LORA_LRS = (3e-4, 1e-3, 3e-3)
RS_LR = 1e-3 * 2.0 / (16.0 / 8 ** 0.5)  # alpha/sqrt(r) at r=8 is 5.66; this lr gives r=8 the step of alpha/r at 1e-3
K = 8  # rank of the LoRA recipe, and of the subspaces compared


def settings(part: str, quick: bool) -> list[ClassifierSetting]:
    if part == "headline":
        if quick:
            return [ClassifierSetting("full", 1e-4), ClassifierSetting("lora", 1e-3)]
        return [ClassifierSetting("full", lr) for lr in FULL_LRS] + [ClassifierSetting("lora", lr) for lr in LORA_LRS]
    if quick:
        return [ClassifierSetting("lora", RS_LR, r=8, use_rslora=True), ClassifierSetting("lora", 1e-3, pooling="mean")]
    return [ClassifierSetting("lora", 1e-3, r=32), ClassifierSetting("lora", RS_LR, r=32, use_rslora=True),
            ClassifierSetting("lora", 1e-3, pooling="mean")]


def _linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("classifier")]


_BASES: dict[int, tuple] = {}  # seed -> (pretrained classifier, tokenizer), loaded once per worker process


def run_task(task: tuple) -> dict:
    """One (setting, seed) run in a worker; with ``analyse`` also the spectrum, the truncated accuracies and the
    top-8 singular vectors of the update (the parent pairs full and LoRA runs of a seed for the overlap)."""
    setting, seed, cfg, analyse, ranks, threads = task
    torch.set_num_threads(threads)
    if seed not in _BASES:
        _BASES.clear()
        _BASES[seed] = load_minilm_classifier(seed=seed)
    base, tokenizer = _BASES[seed]
    run = run_setting(setting, seed, cfg, base, tokenizer, keep_model=analyse)
    print(f"seed {seed} {run['label']:28s} val {run['val_accuracy']:.3f} test {run['test_accuracy']:.3f} "
          f"max loss {run['max_loss']:.2f}  ({run['cpu_s']:.0f} s CPU)", flush=True)
    model, data = run.pop("model", None), run.pop("data", None)
    if analyse:
        names = _linear_names(base)
        updates = weight_updates(model, base, names)
        run["bases"] = {n: top_singular_vectors(d, K) for n, d in updates.items()}
        if setting.method == "full":
            run["spectrum"] = {"energy_at_8": [energy_captured(updates[n], K) for n in names],
                               "baseline_at_8": [K / min(updates[n].shape) for n in names],
                               "norm": [float(updates[n].norm()) for n in names],
                               "truncated_test_accuracy": {
                                   str(r): evaluate_text_classifier(truncate_updates(model, base, names, r),
                                                                    data.test).accuracy for r in ranks}}
    return run


def lowrank_for_seed(seed_runs: list[dict], names: list[str]) -> dict:
    """Spectrum and truncation of each full run, and the overlap of each (full, LoRA r=8) pair's top-8 subspaces."""
    out = {"layers": names, "full": {}, "overlap": {}}
    for full in (r for r in seed_runs if r["method"] == "full"):
        out["full"][full["label"]] = full["spectrum"]
        for lora in (r for r in seed_runs if r["method"] == "lora"):
            out["overlap"][f"{full['label']}|{lora['label']}"] = {
                "left": [overlap(full["bases"][n][0], lora["bases"][n][0]) for n in names],
                "right": [overlap(full["bases"][n][1], lora["bases"][n][1]) for n in names]}
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("headline", "variants"), default="headline")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of stage 1 (default 2)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 settings, a few steps: checks the pipeline")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (worker processes)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default studies/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    profile = current_profile()
    cfg = profile.pick(CLASSIFIER_FINETUNE_TINY, CLASSIFIER_FINETUNE_FULL)
    if args.quick:
        cfg = smoke_capped(cfg)
    n_seeds = 2 if args.quick else (args.seeds or 2)
    seeds = list(range(n_seeds))
    chosen = settings(args.part, args.quick)
    ranks = (K,) if args.quick else (K, 64)
    t0, c0 = time.perf_counter(), time.process_time()
    pool = multiprocessing.get_context("spawn").Pool(args.jobs, initializer=own_session) if args.jobs > 1 else None

    def run_all(tasks: list[tuple]) -> list[dict]:
        return pool.map(run_task, tasks, chunksize=1) if pool is not None else [run_task(t) for t in tasks]

    analyse = args.part == "headline"
    stage1 = run_all([(s, seed, cfg, analyse and not (args.quick and seed > 0), ranks, args.threads)
                      for seed in seeds for s in chosen])  # stage 1: every setting
    names = _linear_names(load_minilm_classifier(seed=0)[0]) if analyse else []
    lowrank = {str(seed): lowrank_for_seed([r for r in stage1 if r["seed"] == seed], names)
               for seed in seeds if any("bases" in r for r in stage1 if r["seed"] == seed)}
    runs = stage1
    extra_seeds = []
    if args.part == "headline":  # stage 2: each method's best setting on validation, more seeds
        best = [best_setting(runs, method) for method in ("full", "lora")]
        extra_seeds = list(range(n_seeds, n_seeds + 1 if args.quick else max(n_seeds, 5)))
        runs = runs + run_all([(s, seed, cfg, False, ranks, args.threads)
                               for seed in extra_seeds for s in chosen if s.label in best])
    if pool is not None:
        pool.close()
        pool.join()
    runs = [{k: v for k, v in r.items() if k not in ("bases", "spectrum")} for r in runs]
    results = {"study": f"{NAME}_{args.part}", "profile": profile.name, "quick": args.quick,
               "config": dataclasses.asdict(cfg), "seeds": seeds, "extra_seeds": extra_seeds,
               "settings": [dataclasses.asdict(s) | {"label": s.label} for s in chosen], "runs": runs,
               "lowrank": lowrank, "threads": args.threads, "jobs": args.jobs,
               "wall_s": time.perf_counter() - t0,
               "cpu_s": sum(r["cpu_s"] for r in runs),
               "note": "timings measured on a shared machine under load (other jobs running); cpu_s sums the runs"}
    path = results_path(f"{NAME}_{args.part}", profile.name, "cpu", args.out or RESULTS)
    write_results(path, results, "cpu")
    print(f"wrote {path} ({results['cpu_s'] / 60:.1f} min CPU in the runs)")
    return path


if __name__ == "__main__":
    main()
