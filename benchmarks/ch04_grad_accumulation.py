"""Peak memory and speed of batch size 1, accumulation 16 and batch size 16 (chapter 4).

Each scheme runs in a fresh child process, so one scheme's freed memory cannot hide another's peak.
A child loads MiniLM, tokenizes the training subset, then trains for ``--steps`` optimizer steps and
records:

* CPU: the peak resident set size during training minus the RSS just before it (Linux ``VmHWM``,
  reset through ``/proc/self/clear_refs``), plus autograd's saved-activation bytes of one micro-batch;
* CUDA: ``torch.cuda.max_memory_allocated`` during training (and the same activation count);
* seconds per training example (the first step, which warms up kernels, is not timed).

Writes ``benchmarks/results/grad_accumulation-<profile>-<cpu|cuda>.json``. Run:

    .venv/bin/python benchmarks/ch04_grad_accumulation.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict

import torch

from minillm.accumulation import (ACCUMULATION_FULL, ACCUMULATION_TINY, freeze_lower_layers, summed_loss,
                                  train_accumulated)
from minillm.core.bench import results_path, write_results
from minillm.core.memory import saved_activation_bytes, training_state_bytes
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device, seed_everything
from minillm.core.training import make_adamw
from minillm.data.sentiment import load_sentiment_splits
from minillm.data.text_classification import make_loader, tokenize_examples
from minillm.pretrained import load_minilm_classifier

NAME = "ch04_grad_accumulation"

SCHEMES = {"batch 1": (1, 1), "micro-batch 1 x accumulation 16": (1, 16), "batch 16": (16, 1)}


def _status_kb(field: str) -> int | None:
    try:
        for line in open("/proc/self/status", encoding="utf-8"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def measure(scheme: str, steps: int) -> dict:
    micro, k = SCHEMES[scheme]
    cfg = current_profile().pick(ACCUMULATION_TINY, ACCUMULATION_FULL)
    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(2)
    seed_everything(cfg.seed)
    splits = load_sentiment_splits(cfg.corpus, seed=cfg.seed)
    model, tok = load_minilm_classifier(seed=cfg.seed)
    freeze_lower_layers(model, cfg.trainable_layers)
    model.to(device)
    data = tokenize_examples(tok, splits.train[: micro * k * (steps + 1)], cfg.max_length)
    loader = list(make_loader(data, micro, shuffle=False, pad_id=tok.pad_token_id))
    model.train()  # dropout masks are saved for backward too: measure the training forward pass
    probe = {n: t.to(device) for n, t in loader[0].items()}
    activations = saved_activation_bytes(model, lambda: summed_loss(model, probe, "examples"))
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay, decay="all", fused=True)
    amp = torch.bfloat16 if cfg.amp else None
    trained = torch.compile(model) if cfg.compile else model
    train_accumulated(trained, loader[:k], optimizer, k, autocast_dtype=amp, progress=False)  # warm-up step
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _status_kb("VmRSS")
    peak_ok = _reset_peak_rss()
    start = time.perf_counter()
    log = train_accumulated(trained, loader[k:], optimizer, k, autocast_dtype=amp, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM") if peak_ok else None
    return {
        "scheme": scheme, "micro_batch_size": micro, "accumulation_steps": k, "optimizer_steps": log.steps,
        "examples": log.examples, "seconds_per_example": seconds / log.examples,
        "activation_bytes": activations, "state_bytes": training_state_bytes(model).total,
        "rss_growth_bytes": (peak - rss_before) * 1024 if peak is not None and rss_before else None,
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=current_profile().pick(2, 20), help="timed optimizer steps")
    parser.add_argument("--scheme", choices=sorted(SCHEMES), help="(internal) measure one scheme and print JSON")
    args = parser.parse_args()
    if args.scheme:
        print("RESULT " + json.dumps(measure(args.scheme, args.steps)))
        return
    runs = []
    for scheme in SCHEMES:
        out = subprocess.run([sys.executable, __file__, "--scheme", scheme, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:]))
        print(f"{scheme:>34}: {runs[-1]['seconds_per_example'] * 1e3:8.1f} ms/example, activations "
              f"{runs[-1]['activation_bytes'] / 2**20:7.2f} MiB, RSS growth "
              f"{(runs[-1]['rss_growth_bytes'] or 0) / 2**20:7.1f} MiB")
    device = pick_device()
    path = results_path(NAME, current_profile().name, device)
    write_results(path, {"config": asdict(current_profile().pick(ACCUMULATION_TINY, ACCUMULATION_FULL)), "steps": args.steps, "runs": runs}, device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
