"""The MoE against dense models at equal active and at equal total parameters, over seeds (chapter 2).

Three models, each trained on the same seeds (a seed fixes the initial weights and the training batches, so
the runs of one seed are paired), under one set of rules: GELU MLPs and experts, GPT-2 initialisation, no expert
capacity (no token is ever dropped, in training or evaluation), the same schedule (``MOE_TRAIN_TINY``):

* ``moe``          — the chapter's MoE: 8 experts of width 2C, makeMoE's noisy top-2 router, balancing 0.01;
* ``dense-active`` — one MLP of width 4C: the parameters one MoE token uses (this is chapter 1's GPT);
* ``dense-total``  — one MLP of width 16C: as many parameters as the MoE stores.

Each run records the exact validation loss on the first 16,384 validation tokens ten times per run (with the tokens
seen and the training time so far, wall and CPU, evaluations excluded) and on the whole split at the end.

One learning rate (chapter 1's schedule) serves all three, untuned for any of them: the comparison is at equal
recipe, not at each model's best rate.

Writes ``studies/results/ch02_moe_vs_dense-<profile>-<device>.json`` (rewritten after every run; ``--resume``
keeps what an interrupted call finished). About 15 min of CPU time at 1 thread (tiny profile; the chapter's committed run used ``--iters 300``, about 5 min):

    .venv/bin/python studies/ch02_moe_vs_dense.py              # the full study
    .venv/bin/python studies/ch02_moe_vs_dense.py --quick      # the pipeline in seconds (tests); proves nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from minillm.core.bench import results_path, write_results
from minillm.core.paths import project_root
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device
from minillm.data.char_tokenizer import CharTokenizer
from minillm.data.lm_batches import TokenSplits
from minillm.data.shakespeare import load_shakespeare
from minillm.moe.config import MOE_TRAIN_FULL, MOE_TRAIN_TINY, dense_baseline, moe_config
from minillm.moe.experiment import limit_heap_fragmentation, run_plan

NAME = "ch02_moe_vs_dense"
MODELS = ("moe", "dense-active", "dense-total")


def results_file(device, results_dir: Path | None = None) -> Path:
    folder = results_dir if results_dir is not None else (project_root() or Path.cwd()) / "studies" / "results"
    return results_path(NAME, current_profile().name, device, folder)


def model_configs(base) -> dict:
    return {"moe": base, "dense-active": dense_baseline(base, "active"), "dense-total": dense_baseline(base, "total")}


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=None,
                        help="training steps (default: the profile's schedule; the warm-up scales with it)")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    parser.add_argument("--quick", action="store_true", help="a miniature: checks the pipeline, proves nothing")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: studies/results)")
    parser.add_argument("--resume", action="store_true", help="keep the runs an earlier, interrupted call wrote")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="add the runs of these result files (other seeds, same models and schedule) to the "
                             "results file, and stop")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(results_file(pick_device("cpu"), args.out), args.merge, pick_device("cpu"))
    torch.set_num_threads(args.threads)
    limit_heap_fragmentation()
    device = pick_device("cpu")
    profile = current_profile()
    text = load_shakespeare()
    tok = CharTokenizer.from_text(text)
    splits = TokenSplits.from_tokens(tok.encode(text), val_fraction=0.1)
    base = moe_config(profile.pick("moe-tiny", "makemoe"), tok.vocab_size, activation="gelu", init="gpt2",
                      capacity_factor=None, dropout=profile.pick(0.0, 0.1))
    train = profile.pick(MOE_TRAIN_TINY, MOE_TRAIN_FULL)
    if args.iters is not None:
        train = replace(train, max_iters=args.iters, warmup_iters=train.warmup_iters * args.iters // train.max_iters)
    curve_every, curve_tokens = max(1, train.max_iters // 10), 16_384
    if args.quick:
        base = replace(base, block_size=16, n_layer=1, n_embd=32, n_head=2)
        train = replace(train, max_iters=20, warmup_iters=2, batch_size=4)
        curve_every, curve_tokens = 10, 1024
        splits = TokenSplits(splits.train[:20_000], splits.val[:4_000])
        args.seeds = args.seeds[:2]
    configs = model_configs(base)
    plan = [dict(cfg=configs[m], train_cfg=train, seed=s, tag=m, curve_every=curve_every, curve_tokens=curve_tokens)
            for s in args.seeds for m in MODELS]  # seed-major: the load of the machine hits every model alike
    path = results_file(device, args.out)
    meta = {"study": NAME, "profile": profile.name, "quick": args.quick, "seeds": args.seeds,
            "models": {m: asdict(c) for m, c in configs.items()}, "schedule": asdict(train),
            "curve": {"every": curve_every, "val_tokens": curve_tokens}, "threads": args.threads, "jobs": args.jobs,
            "note": "wall and CPU seconds were measured on a shared 2-core machine under load: compare them only "
                    "within this file (the runs of one seed ran back to back)"}
    runs: list[dict] = []
    if args.resume and path.exists():
        old = json.loads(path.read_text())
        if old.get("models") == json.loads(json.dumps(meta["models"])) and old.get("schedule") == meta["schedule"]:
            runs = old["runs"]
            print(f"resuming: {len(runs)} runs already in {path}")
    started = time.time()

    def save(runs_so_far: list[dict], complete: bool = False) -> None:
        write_results(path, {**meta, "complete": complete, "runs": runs_so_far}, device)

    run_plan(plan, splits, save, runs, jobs=args.jobs, threads=args.threads)
    save(runs, complete=True)
    print(f"wrote {path}: {len(runs)} runs, {sum(r['train_cpu_s'] for r in runs) / 60:.0f} min of training CPU time, "
          f"{(time.time() - started) / 60:.0f} min wall")
    return path


def merge(path: Path, others: list[Path], device) -> Path:
    """Add the runs of ``others`` (the same study on other seeds, e.g. run as separate processes) to ``path``."""
    main = json.loads(path.read_text())
    runs = list(main["runs"])
    keys = {(r["tag"], r["seed"]) for r in runs}
    for other in others:
        data = json.loads(Path(other).read_text())
        if data["models"] != main["models"] or data["schedule"] != main["schedule"]:
            raise ValueError(f"{other} ran other models or another schedule than {path}; merge only runs of one study")
        runs += [r for r in data["runs"] if (r["tag"], r["seed"]) not in keys]
        keys |= {(r["tag"], r["seed"]) for r in data["runs"]}
    main["seeds"] = sorted({r["seed"] for r in runs})
    main["complete"] = keys == {(m, s) for m in main["models"] for s in main["seeds"]}  # every model on every seed
    main["runs"] = runs
    main.pop("machine", None)
    write_results(path, main, device)
    print(f"wrote {path}: {len(runs)} runs, seeds {main['seeds']}")
    return path


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main(sys.argv[1:])
