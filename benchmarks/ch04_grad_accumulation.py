"""Memory and speed of batch size 1, accumulation 16 and batch size 16 (chapter 4).

Each measurement runs in a fresh child process, so one scheme's freed memory cannot hide another's peak.

``sentences`` (one child per scheme): MiniLM on the movie-review sentences, ``--steps`` timed optimizer steps
after one warm-up step, recording

* seconds per training example, and seconds of one AdamW step on its own — every scheme runs one forward and one
  backward pass per example; what differs is how many optimizer steps share them (1, 1/16, 1/16 per example);
* autograd's saved-activation bytes of one micro-batch and the training state (weights, gradients, moments);
* CPU: the peak resident set size during training minus the RSS just before it (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``); CUDA: ``torch.cuda.max_memory_allocated`` during training.

``reviews`` (one child): whole movie reviews at 512 tokens against the chapter's 512 MiB activation cap —
saved-activation bytes of micro-batches of 1 and 2 (and, on a GPU, the peak allocated memory of one
forward-and-backward pass of micro-batches 1, 2 and 16), and which micro-batch sizes the cap refuses.

Writes ``benchmarks/results/ch04_grad_accumulation-<profile>-<cpu|cuda>.json``, with the load average of the
machine while it ran. Run:

    .venv/bin/python benchmarks/ch04_grad_accumulation.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import torch

from minillm.accumulation import (ACCUMULATION_FULL, ACCUMULATION_TINY, REVIEWS_FULL, REVIEWS_TINY, SCHEMES,
                                  ActivationCapExceeded, activation_cap, check_micro_batch, freeze_lower_layers,
                                  summed_loss, train_accumulated)
from minillm.core.bench import results_path, time_call, write_results
from minillm.core.memory import training_state_bytes
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device, seed_everything
from minillm.core.training import make_adamw
from minillm.data.sentiment import load_sentiment_splits
from minillm.data.text_classification import collate_padded, make_loader, tokenize_examples
from minillm.pretrained import load_minilm_classifier

NAME = "ch04_grad_accumulation"
MEASURED = ("batch 1", "accumulation 16", "batch 16")
MiB = 2**20


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


def _setup(device):
    if device.type == "cpu":
        torch.set_num_threads(2)


def measure(scheme_name: str, steps: int) -> dict:
    scheme = SCHEMES[scheme_name]
    micro, k = scheme.micro_batch_size, scheme.accumulation_steps
    cfg = current_profile().pick(ACCUMULATION_TINY, ACCUMULATION_FULL)
    device = pick_device()
    _setup(device)
    seed_everything(cfg.seed)
    splits = load_sentiment_splits(cfg.corpus, seed=cfg.seed)
    model, tok = load_minilm_classifier(seed=cfg.seed)
    freeze_lower_layers(model, cfg.trainable_layers)
    model.to(device)
    data = tokenize_examples(tok, splits.train[: micro * k * (steps + 1)], cfg.max_length)
    loader = list(make_loader(data, micro, shuffle=False, pad_id=tok.pad_token_id))
    model.train()  # dropout masks are saved for backward too: measure the training forward pass
    probe = {n: t.to(device) for n, t in loader[0].items()}
    with activation_cap(model, None) as meter:
        out = summed_loss(model, probe, "examples")
    del out
    optimizer = make_adamw(model, cfg.lr, cfg.weight_decay, decay="all", fused=True)
    amp = torch.bfloat16 if cfg.amp else None
    trained = torch.compile(model) if cfg.compile else model
    train_accumulated(trained, loader[:k], optimizer, k, autocast_dtype=amp, progress=False)  # warm-up step
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _status_kb("VmRSS")
    peak_ok = _reset_peak_rss()
    start, cpu0 = time.perf_counter(), time.process_time()
    log = train_accumulated(trained, loader[k:], optimizer, k, autocast_dtype=amp, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    peak = _status_kb("VmHWM") if peak_ok else None
    cuda_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    step_time = time_call(optimizer.step, device, warmup=1, repeats=5)["median_s"]  # AdamW alone, same gradients
    return {
        "scheme": scheme_name, "micro_batch_size": micro, "accumulation_steps": k, "optimizer_steps": log.steps,
        "examples": log.examples, "forward_backward_passes": log.examples // micro,
        "seconds_per_example": seconds / log.examples, "cpu_seconds_per_example": cpu / log.examples,
        "optimizer_step_seconds": step_time, "activation_bytes": meter.bytes,
        "state_bytes": training_state_bytes(model).total,
        "rss_growth_bytes": (peak - rss_before) * 1024 if peak is not None and rss_before else None,
        "cuda_peak_bytes": cuda_peak,
    }


def measure_reviews() -> dict:
    cfg = current_profile().pick(REVIEWS_TINY, REVIEWS_FULL)
    device = pick_device()
    _setup(device)
    splits = load_sentiment_splits(cfg.corpus, seed=cfg.seed)
    model, tok = load_minilm_classifier(seed=cfg.seed)
    model.to(device).train()
    cap = int(cfg.activation_cap_mib * MiB)
    data = tokenize_examples(tok, splits.train[:16], cfg.max_length)
    longest = sorted(range(len(data)), key=lambda i: -len(data.input_ids[i]))
    sizes = (1, 2, 16) if device.type == "cuda" else (1, 2)  # batch 16 × 512 saves ~4.8 GB: a GPU's job here
    rows = []
    for m in sizes:
        batch = {n: t.to(device) for n, t in collate_padded([data[i] for i in longest[:m]], tok.pad_token_id).items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with activation_cap(model, None) as meter:
            loss = summed_loss(model, batch, "examples")
        loss.backward()
        model.zero_grad(set_to_none=True)
        row = {"micro_batch_size": m, "tokens": int(batch["input_ids"].shape[1]), "activation_bytes": meter.bytes,
               "fits_cap": meter.bytes <= cap}
        if device.type == "cuda":
            torch.cuda.synchronize()
            row["cuda_peak_above_weights_bytes"] = torch.cuda.max_memory_allocated() - base
        rows.append(row)
    batch16 = {n: t.to(device) for n, t in collate_padded([data[i] for i in longest[:16]], tok.pad_token_id).items()}
    try:
        check_micro_batch(model, batch16, cap, lambda b: summed_loss(model, b, "examples"))
        refused = None
    except ActivationCapExceeded as err:
        refused = str(err)
    return {"config": asdict(cfg), "cap_bytes": cap, "micro_batches": rows, "batch_16_refused": refused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=current_profile().pick(2, 20), help="timed optimizer steps")
    parser.add_argument("--scheme", choices=sorted(SCHEMES), help="(internal) measure one scheme and print JSON")
    parser.add_argument("--reviews", action="store_true", help="(internal) measure the reviews and print JSON")
    args = parser.parse_args()
    if args.scheme or args.reviews:
        print("RESULT " + json.dumps(measure_reviews() if args.reviews else measure(args.scheme, args.steps)))
        return

    def child(*extra: str) -> dict:
        out = subprocess.run([sys.executable, __file__, *extra, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])

    load_before = os.getloadavg()
    runs = []
    for scheme in MEASURED:
        runs.append(child("--scheme", scheme))
        r = runs[-1]
        print(f"{scheme:>16}: {r['seconds_per_example'] * 1e3:7.1f} ms/example (AdamW step "
              f"{r['optimizer_step_seconds'] * 1e3:.1f} ms), activations {r['activation_bytes'] / MiB:7.2f} MiB")
    reviews = child("--reviews")
    for row in reviews["micro_batches"]:
        print(f"reviews, micro-batch {row['micro_batch_size']:2d} x {row['tokens']} tokens: activations "
              f"{row['activation_bytes'] / MiB:7.1f} MiB, under the cap: {row['fits_cap']}")
    device = pick_device()
    path = results_path(NAME, current_profile().name, device)
    write_results(path, {"config": asdict(current_profile().pick(ACCUMULATION_TINY, ACCUMULATION_FULL)),
                         "steps": args.steps, "runs": runs, "reviews": reviews,
                         "load_average": {"before": load_before, "after": os.getloadavg()}}, device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
