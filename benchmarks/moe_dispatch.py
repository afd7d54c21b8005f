"""Benchmark: makeMoE's per-expert masked loop vs the sorted dispatch vs the dense reference.

One SparseMoE layer (8 experts, top-2) at several token counts, from a decoding step (a few tokens) to
training batches. Each variant first proves it computes the same output as the others (max |diff| is
recorded and must be <= 1e-5); then forward (inference) and forward+backward (training) are timed with
the variants *interleaved* round by round, so a burst of load from other processes hits all of them.
We report the minimum over rounds (the least disturbed run) and the median.

Writes benchmarks/results/moe_dispatch-<profile>-<device>.json. Run:

    python benchmarks/moe_dispatch.py                 # profile from MINILLM_PROFILE (tiny by default)
    MINILLM_PROFILE=full python benchmarks/moe_dispatch.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from minillm.bench import results_path, write_results
from minillm.moe import SparseMoE
from minillm.moe_lm import moe_config_for_profile
from minillm.profile import current_profile
from minillm.runtime import pick_device, seed_everything

COMMAND = "python benchmarks/moe_dispatch.py"
VARIANTS = ("masked_loop", "sorted", "dense")
#: tokens per call: a decoding step of 8 sequences, the chapter's training batch (16 x 32), a larger one
TOKEN_COUNTS = {"tiny": (8, 512, 2048), "full": (8, 2048, 8192)}
HEADLINE_TOKENS = {"tiny": 512, "full": 2048}
TOLERANCE = 1e-5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_timings(fns: dict, device: torch.device, rounds: int, warmup: int = 2) -> dict[str, dict]:
    """Seconds per call of each function, calling them in turn ``rounds`` times: min and median."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: {"min_s": min(t), "median_s": statistics.median(t), "rounds": rounds} for name, t in times.items()}


def compare_at(n_embd: int, hidden: int, n_tokens: int, device: torch.device, rounds: int) -> dict:
    """Equality check and throughput of the three dispatch strategies for one token count."""
    layer = SparseMoE(n_embd, n_experts=8, top_k=2, hidden=hidden, dropout=0.0).to(device).eval()
    x = torch.randn(1, n_tokens, n_embd, device=device)
    outputs = {}
    with torch.no_grad():
        for name in VARIANTS:
            torch.manual_seed(0)
            layer.dispatch = name
            outputs[name] = layer(x)
    max_diff = {name: (outputs[name] - outputs["masked_loop"]).abs().max().item() for name in VARIANTS}
    if max(max_diff.values()) > TOLERANCE:
        raise AssertionError(f"dispatch strategies disagree at {n_tokens} tokens: {max_diff}")

    def forward(name):
        def run():
            layer.dispatch = name
            with torch.no_grad():
                layer(x)
        return run

    x_train = x.clone().requires_grad_(True)

    def train_step(name):
        def run():
            layer.dispatch = name
            layer.zero_grad(set_to_none=True)
            layer(x_train).sum().backward()
        return run

    variants = VARIANTS if n_tokens <= 4096 else ("masked_loop", "sorted")  # dense costs E/k x the work
    row = {"max_abs_diff_vs_masked_loop": max_diff}
    for mode, make in (("forward", forward), ("train", train_step)):
        t = interleaved_timings({name: make(name) for name in variants}, device, rounds)
        row[mode] = {name: {**t[name], "tokens_per_s": n_tokens / t[name]["min_s"],
                            "tokens_per_s_median": n_tokens / t[name]["median_s"]} for name in variants}
        base = row[mode]["masked_loop"]
        row[mode]["speedup_sorted_vs_masked_loop"] = row[mode]["sorted"]["tokens_per_s"] / base["tokens_per_s"]
        row[mode]["speedup_sorted_vs_masked_loop_median"] = (row[mode]["sorted"]["tokens_per_s_median"]
                                                             / base["tokens_per_s_median"])
    return row


def run(device: torch.device, quick: bool = False) -> dict:
    profile = current_profile()
    cfg = moe_config_for_profile(vocab_size=65)
    hidden = cfg.expert_mult * cfg.n_embd
    seed_everything(0)
    rounds = 5 if quick else 30
    counts = (8, 64) if quick else TOKEN_COUNTS[profile.name]
    results = {
        "benchmark": "moe_dispatch",
        "profile": profile.name,
        "config": {"n_embd": cfg.n_embd, "expert_hidden": hidden, "n_experts": 8, "top_k": 2},
        "token_counts": list(counts),
        "tolerance": TOLERANCE,
        "by_tokens": {str(n): compare_at(cfg.n_embd, hidden, n, device, rounds) for n in counts},
    }
    head = str(HEADLINE_TOKENS[profile.name]) if str(HEADLINE_TOKENS[profile.name]) in results["by_tokens"] else str(counts[-1])
    results["headline"] = {"tokens": int(head), **{f"{mode}_speedup": results["by_tokens"][head][mode]["speedup_sorted_vs_masked_loop"]
                                                   for mode in ("forward", "train")}}
    return results


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, the course's laptop)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: benchmarks/results/...)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and sizes (for tests)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    results = run(device, quick=args.quick)
    path = write_results(args.out or results_path("moe_dispatch", results["profile"], device), results, device)
    for n, row in results["by_tokens"].items():
        for mode in ("forward", "train"):
            speeds = "  ".join(f"{name} {row[mode][name]['tokens_per_s']:11,.0f}" for name in VARIANTS if name in row[mode])
            print(f"N={n:>5s} {mode:7s} tok/s: {speeds}   sorted/masked x{row[mode]['speedup_sorted_vs_masked_loop']:.2f}")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
