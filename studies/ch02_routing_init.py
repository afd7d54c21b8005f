"""makeMoE's claims about its router and its initialisation, tested over seeds (chapter 2).

``routing`` — noisy top-k against plain top-k, each with and without the balancing loss (α = 0.01 or 0), on the
chapter's tiny MoE (GELU, GPT-2 init, no capacity) for 200 steps. Every 50 steps each run records the busiest
expert's share × E of a fixed probe batch (worst layer), the router's gate entropy and the exact validation loss on
16,384 validation tokens. Which differences are signal and which are seed-to-seed noise is for the paired
intervals to say.

``init`` — makeMoE initialises every linear layer (attention included) with Kaiming normal and suggests trying
Glorot. Training curves, with ReLU experts as in makeMoE, of: Kaiming everywhere, Glorot everywhere, chapter 1's
GPT-2 rule everywhere, and Kaiming on the experts and router only (GPT-2 elsewhere), which tells whether the
difference comes from the experts or from the attention layers. 200 steps, the exact validation loss on 16,384
validation tokens every 50 steps.

Writes ``studies/results/ch02_routing_init-<profile>-<device>.json`` (rewritten after every run; ``--resume``
keeps what an interrupted call finished). About 12 min of CPU time at 1 thread (tiny profile):

    .venv/bin/python studies/ch02_routing_init.py              # the full study
    .venv/bin/python studies/ch02_routing_init.py --quick      # the pipeline in seconds (tests); proves nothing
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
from minillm.moe.config import MOE_TRAIN_FULL, MOE_TRAIN_TINY, moe_config
from minillm.moe.experiment import limit_heap_fragmentation, run_plan

NAME = "ch02_routing_init"
ROUTING = {"noisy-bal": dict(noisy=True), "plain-bal": dict(noisy=False),
           "noisy-nobal": dict(noisy=True, balance_coef=0.0), "plain-nobal": dict(noisy=False, balance_coef=0.0)}
INITS = {"kaiming-all": dict(init="kaiming"), "glorot-all": dict(init="glorot"), "gpt2-all": dict(init="gpt2"),
         "kaiming-experts": dict(init="gpt2", expert_init="kaiming")}


def results_file(device, results_dir: Path | None = None) -> Path:
    folder = results_dir if results_dir is not None else (project_root() or Path.cwd()) / "studies" / "results"
    return results_path(NAME, current_profile().name, device, folder)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parts", nargs="+", default=["routing", "init"], choices=["routing", "init"])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    parser.add_argument("--quick", action="store_true", help="a miniature: checks the pipeline, proves nothing")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: studies/results)")
    parser.add_argument("--resume", action="store_true", help="keep the runs an earlier, interrupted call wrote")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    limit_heap_fragmentation()
    device = pick_device("cpu")
    profile = current_profile()
    text = load_shakespeare()
    tok = CharTokenizer.from_text(text)
    splits = TokenSplits.from_tokens(tok.encode(text), val_fraction=0.1)
    base = moe_config(profile.pick("moe-tiny", "makemoe"), tok.vocab_size, activation="gelu", init="gpt2",
                      expert_init=None, capacity_factor=None, dropout=profile.pick(0.0, 0.1))
    train = profile.pick(MOE_TRAIN_TINY, MOE_TRAIN_FULL)
    train = replace(train, max_iters=args.iters, warmup_iters=min(train.warmup_iters, args.iters // 10))
    curves = {"routing": 50, "init": 50}
    curve_tokens = 16_384
    if args.quick:
        base = replace(base, block_size=16, n_layer=1, n_embd=32, n_head=2)
        train = replace(train, max_iters=20, warmup_iters=2, batch_size=4)
        curves, curve_tokens = {"routing": 10, "init": 10}, 1024
        splits = TokenSplits(splits.train[:20_000], splits.val[:4_000])
        args.seeds = args.seeds[:2]
    variants = {}
    if "routing" in args.parts:
        variants.update({tag: ("routing", replace(base, **over)) for tag, over in ROUTING.items()})
    if "init" in args.parts:
        variants.update({tag: ("init", replace(base, activation="relu", **over)) for tag, over in INITS.items()})
    plan = [dict(cfg=cfg, train_cfg=train, seed=s, tag=tag, curve_every=curves[part], curve_tokens=curve_tokens,
                 full_eval=False) for s in args.seeds for tag, (part, cfg) in variants.items()]
    path = results_file(device, args.out)
    meta = {"study": NAME, "profile": profile.name, "quick": args.quick, "seeds": args.seeds, "parts": args.parts,
            "variants": {tag: {"part": part, "config": asdict(cfg)} for tag, (part, cfg) in variants.items()},
            "schedule": asdict(train), "curve": {"every": curves, "val_tokens": curve_tokens},
            "threads": args.threads, "jobs": args.jobs,
            "note": "wall and CPU seconds were measured on a shared 2-core machine under load"}
    runs: list[dict] = []
    if args.resume and path.exists():
        old = json.loads(path.read_text())
        if old.get("variants") == json.loads(json.dumps(meta["variants"])) and old.get("schedule") == meta["schedule"]:
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


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main(sys.argv[1:])
