"""Benchmark: makeMoE's per-expert masked loop vs the sorted and batched dispatches vs the dense reference.

One SparseMoE layer (8 experts, top-2) at several token counts, from a decoding step (a few tokens) to
training batches. Each variant first proves it computes the same output as the others (max |diff| is
recorded and must be <= 1e-5); then the dispatch alone, the layer's forward (inference) and its
forward+backward (training) are timed with the variants *interleaved* round by round, so a burst of load
from other processes hits all of them. We report the minimum over rounds (the least disturbed run) and
the median.

Writes benchmarks/results/moe_dispatch-<profile>-<device>.json. Run:

    python benchmarks/ch02_moe_dispatch.py                 # profile from MINILLM_PROFILE (tiny by default)
    MINILLM_PROFILE=full python benchmarks/ch02_moe_dispatch.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from minillm.core.bench import interleaved_timings, results_path, write_results
from minillm.moe import SparseMoE
from minillm.moe.dispatch import dispatch
from minillm.moe.model import moe_config
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device, seed_everything

NAME = "ch02_moe_dispatch"
COMMAND = f"python benchmarks/{NAME}.py"
VARIANTS = ("masked_loop", "sorted", "batched", "dense")
FAST = ("sorted", "batched", "dense")  # compared against makeMoE's masked loop
MODES = ("dispatch", "dispatch_train", "forward", "train")
DISPATCH_MODES, LAYER_MODES = MODES[:2], MODES[2:]
#: tokens per call: a decoding step of 8 sequences, of 64, the chapter's training batch, a larger one
TOKEN_COUNTS = {"tiny": (8, 64, 512, 2048), "full": (8, 64, 2048, 8192)}
TOLERANCE = 1e-5
BAR = 3.0  # the bar: fast dispatch >= 3x the masked loop's tokens/s


def compare_at(n_embd: int, hidden: int, n_tokens: int, device: torch.device, rounds: int) -> dict:
    """Equality check and throughput of the dispatch strategies for one token count.

    Four timings: the dispatch function alone on fixed routing, in inference (``dispatch``) and forward +
    backward (``dispatch_train``); and the whole layer — router, dispatch, statistics — in inference
    (``forward``) and forward + backward (``train``).
    """
    layer = SparseMoE(n_embd, n_experts=8, top_k=2, hidden=hidden, dropout=0.0).to(device).eval()
    x = torch.randn(1, n_tokens, n_embd, device=device)
    flat = x.view(n_tokens, n_embd)
    with torch.no_grad():
        routing = layer.router(flat)
    outputs = {}
    with torch.no_grad():
        for name in VARIANTS:
            layer.dispatch = name
            outputs[name] = layer(x)
    max_diff = {name: (outputs[name] - outputs["masked_loop"]).abs().max().item() for name in VARIANTS}
    if max(max_diff.values()) > TOLERANCE:
        raise AssertionError(f"dispatch strategies disagree at {n_tokens} tokens: {max_diff}")

    def dispatch_only(name):
        def run():
            with torch.no_grad():
                dispatch(name, flat, layer.experts, routing.expert_idx, routing.gates)
        return run

    def forward(name):
        def run():
            layer.dispatch = name
            with torch.no_grad():
                layer(x)
        return run

    x_train = x.clone().requires_grad_(True)
    gates_train = routing.gates.clone().requires_grad_(True)

    def dispatch_train(name):
        def run():
            layer.zero_grad(set_to_none=True)
            dispatch(name, x_train.view(n_tokens, n_embd), layer.experts, routing.expert_idx, gates_train).sum().backward()
        return run

    def train_step(name):
        def run():
            layer.dispatch = name
            layer.zero_grad(set_to_none=True)
            layer(x_train).sum().backward()
        return run

    variants = VARIANTS if n_tokens <= 4096 else VARIANTS[:-1]  # dense costs E/k x the work
    row = {"max_abs_diff_vs_masked_loop": max_diff}
    for mode, make in zip(MODES, (dispatch_only, dispatch_train, forward, train_step)):
        t = interleaved_timings({name: make(name) for name in variants}, device, rounds)
        row[mode] = {name: {**t[name], "tokens_per_s": n_tokens / t[name]["min_s"],
                            "tokens_per_s_median": n_tokens / t[name]["median_s"]} for name in variants}
        base = row[mode]["masked_loop"]
        row[mode]["speedup_vs_masked_loop"] = {name: row[mode][name]["tokens_per_s"] / base["tokens_per_s"]
                                               for name in FAST if name in variants}
        row[mode]["speedup_vs_masked_loop_median"] = {
            name: row[mode][name]["tokens_per_s_median"] / base["tokens_per_s_median"]
            for name in FAST if name in variants}
    return row


def run(device: torch.device, quick: bool = False) -> dict:
    profile = current_profile()
    cfg = moe_config(current_profile().pick("moe-tiny", "moe-small"), vocab_size=65)
    hidden = cfg.expert_mult * cfg.n_embd
    seed_everything(0)
    rounds = 5 if quick else 100
    counts = (8, 64) if quick else TOKEN_COUNTS[profile.name]
    by_tokens = {str(n): compare_at(cfg.n_embd, hidden, n, device, rounds)
                 for n in tqdm(counts, desc="token counts", disable=quick)}
    batched = {n: {mode: row[mode]["speedup_vs_masked_loop"]["batched"] for mode in MODES}
               for n, row in by_tokens.items()}
    return {
        "benchmark": "moe_dispatch",
        "profile": profile.name,
        "config": {"n_embd": cfg.n_embd, "expert_hidden": hidden, "n_experts": 8, "top_k": 2},
        "token_counts": list(counts),
        "tolerance": TOLERANCE,
        "by_tokens": by_tokens,
        "headline": {
            "fast_dispatch": "batched",
            "bar": BAR,
            "batched_speedup_vs_masked_loop": batched,
            # token counts at which the batched dispatch clears the bar, in this run: the dispatch alone
            # (inference and training), and the whole layer (inference and training)
            "dispatch_bar_met_at_tokens": [int(n) for n, s in batched.items()
                                           if min(s[m] for m in DISPATCH_MODES) >= BAR],
            "layer_bar_met_at_tokens": [int(n) for n, s in batched.items() if min(s[m] for m in LAYER_MODES) >= BAR],
        },
    }


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
    path = write_results(args.out or results_path(NAME, results["profile"], device), results, device)
    for n, row in results["by_tokens"].items():
        for mode in MODES:
            speeds = "  ".join(f"{name} {row[mode][name]['tokens_per_s']:11,.0f}" for name in VARIANTS if name in row[mode])
            ratios = "  ".join(f"{name} x{r:.2f}" for name, r in row[mode]["speedup_vs_masked_loop"].items())
            print(f"N={n:>5s} {mode:14s} tok/s: {speeds}   vs masked loop: {ratios}")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
