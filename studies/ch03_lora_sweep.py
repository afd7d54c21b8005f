"""Study: LoRA versus full fine-tuning of MiniLM on sentence sentiment, over seeds, with a learning-rate sweep for
both methods — and why a low-rank update suffices (the SVD of full fine-tuning's weight change).

Two parts, each its own JSON (``--part``):

* ``headline`` — stage 1: full fine-tuning at 3e-5, 1e-4, 3e-4 and LoRA (r=8, alpha=16, all linear layers) at
  3e-4, 1e-3, 3e-3, seeds 0 and 1. Each method's setting with the best mean *validation* accuracy is then run with
  seeds 2, 3 and 4 too (stage 2), so the headline compares the two chosen settings over five seeds on the *test*
  split. For the seeds of stage 1 it also measures, per adapted layer, the energy of the full fine-tune's update
  in its top 8 singular directions, the overlap of that top-8 subspace with LoRA's learned update, and the test
  accuracy of the full fine-tune with each update cut to rank 8 and to rank 64.
* ``variants`` — rank and scale rule (r = 2, 32 with alpha/r at 1e-3; r = 2, 8, 32 with alpha/sqrt(r) at 3.5e-4,
  where r = 8 takes the same effective step s * lr as alpha/r at 1e-3), and LoRA at 1e-3 with a mean-pooling head
  instead of [CLS] -> pooler; two seeds each (compared with the headline's runs of the same seeds).

The sizes fit a 2-core machine shared with other jobs. Every run uses the chapter's tiny fine-tuning preset
(60 steps of 16 sentences):

    python studies/ch03_lora_sweep.py --part headline      # ~12 min CPU
    python studies/ch03_lora_sweep.py --part variants      # ~7 min CPU
    python studies/ch03_lora_sweep.py --part headline --quick --out /tmp/x   # the test's few-second version

Writes ``studies/results/ch03_lora_sweep_<part>-<profile>-<device>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    return ([ClassifierSetting("lora", 1e-3, r=r) for r in (2, 32)]
            + [ClassifierSetting("lora", RS_LR, r=r, use_rslora=True) for r in (2, 8, 32)]
            + [ClassifierSetting("lora", 1e-3, pooling="mean")])


def lowrank_for_seed(full_runs: list[dict], lora_runs: list[dict], base, ranks: tuple[int, ...] = (K, 64)) -> dict:
    """Spectrum, truncation accuracy and subspace overlap for one seed's full and LoRA (r=8) runs."""
    names = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("classifier")]
    out = {"layers": names, "full": {}, "overlap": {}}
    lora_bases = {}
    for run in lora_runs:
        updates = weight_updates(run["model"], run["model"], names)
        lora_bases[run["label"]] = {n: top_singular_vectors(d, K) for n, d in updates.items()}
    for run in full_runs:
        updates = weight_updates(run["model"], base, names)
        truncated = {}
        for r in ranks:
            cut = truncate_updates(run["model"], base, names, r)
            truncated[str(r)] = evaluate_text_classifier(cut, run["data"].test).accuracy
        out["full"][run["label"]] = {"energy_at_8": [energy_captured(updates[n], K) for n in names],
                                     "baseline_at_8": [K / min(updates[n].shape) for n in names],
                                     "norm": [float(updates[n].norm()) for n in names],
                                     "truncated_test_accuracy": truncated}
        full_bases = {n: top_singular_vectors(d, K) for n, d in updates.items()}
        for label, lb in lora_bases.items():
            out["overlap"][f"{run['label']}|{label}"] = {
                "left": [overlap(full_bases[n][0], lb[n][0]) for n in names],
                "right": [overlap(full_bases[n][1], lb[n][1]) for n in names]}
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("headline", "variants"), default="headline")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of stage 1 (default 2)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 settings, a few steps: checks the pipeline")
    parser.add_argument("--threads", type=int, default=1)
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
    runs, lowrank = [], {}
    t0, c0 = time.perf_counter(), time.process_time()

    def run_seed(seed: int, seed_settings: list[ClassifierSetting], analyse: bool) -> None:
        base, tokenizer = load_minilm_classifier(seed=seed)
        seed_runs = []
        for setting in seed_settings:
            run = run_setting(setting, seed, cfg, base, tokenizer, keep_model=analyse)
            seed_runs.append(run)
            print(f"seed {seed} {run['label']:28s} val {run['val_accuracy']:.3f} test {run['test_accuracy']:.3f} "
                  f"max loss {run['max_loss']:.2f}  ({run['cpu_s']:.0f} s CPU)", flush=True)
        if analyse:
            lowrank[str(seed)] = lowrank_for_seed([r for r in seed_runs if r["method"] == "full"],
                                                  [r for r in seed_runs if r["method"] == "lora"], base,
                                                  ranks=(K,) if args.quick else (K, 64))
        runs.extend({k: v for k, v in r.items() if k not in ("model", "data")} for r in seed_runs)

    for seed in seeds:  # stage 1: every setting
        run_seed(seed, chosen, analyse=args.part == "headline" and not (args.quick and seed > 0))
    extra_seeds = []
    if args.part == "headline":  # stage 2: each method's best setting on validation, two more seeds
        best = [best_setting(runs, method) for method in ("full", "lora")]
        extra_seeds = list(range(n_seeds, n_seeds + 1 if args.quick else max(n_seeds, 5)))
        for seed in extra_seeds:
            run_seed(seed, [s for s in chosen if s.label in best], analyse=False)
    results = {"study": f"{NAME}_{args.part}", "profile": profile.name, "quick": args.quick,
               "config": dataclasses.asdict(cfg), "seeds": seeds, "extra_seeds": extra_seeds,
               "settings": [dataclasses.asdict(s) | {"label": s.label} for s in chosen], "runs": runs,
               "lowrank": lowrank, "threads": args.threads,
               "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
               "note": "timings measured on a shared machine under load (other jobs running)"}
    path = results_path(f"{NAME}_{args.part}", profile.name, "cpu", args.out or RESULTS)
    write_results(path, results, "cpu")
    print(f"wrote {path} ({results['cpu_s'] / 60:.1f} min CPU)")
    return path


if __name__ == "__main__":
    main()
