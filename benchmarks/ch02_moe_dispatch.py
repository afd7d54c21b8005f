"""Benchmark: the MoE dispatch strategies against the experts' matmul floor, and against makeMoE's masked loop.

One SparseMoE layer of the profile's MoE (8 experts, top-2) at several token counts, from decoding steps (8 and 64
tokens) to training batches, with the router's routing at initialisation (near uniform). Variants:

* ``floor``       — the experts' own products on perfectly balanced, already grouped tokens: the (E, N·k/E, C)
  buffer fed straight to the bank's two batched matmuls. What any dispatch must at least pay;
* ``batched``     — :func:`minillm.moe.dispatch.dispatch_batched` (stacked weights, one padded buffer);
* ``sorted``      — :func:`minillm.moe.dispatch.dispatch_sorted` (one call per expert on contiguous slices);
* ``masked_loop`` — makeMoE's loop (a boolean mask, gather and scatter per expert) on makeMoE's storage, an
  ``nn.ModuleList`` of separate :class:`~minillm.moe.experts.Expert` modules holding the same weights;
* ``dense``       — the reference: every expert on every token, E/k times the arithmetic.

Each variant first proves it computes the masked loop's output (max |diff| <= 1e-5, recorded). Then four
timings, every variant interleaved round by round so a burst of load from other processes hits all of them,
reporting the minimum over rounds (the least disturbed call) and the median: the dispatch alone on fixed
routing in inference (``dispatch``) and forward + backward (``dispatch_train``, a fixed upstream gradient, weight
and input gradients), and the whole layer — router, dispatch, statistics — in inference (``forward``) and training
(``train``). The batched path's padding, E·S / (N·k) rows computed per useful row, is recorded for each size.

Writes benchmarks/results/ch02_moe_dispatch-<profile>-<device>.json. Run:

    python benchmarks/ch02_moe_dispatch.py                 # profile from MINILLM_PROFILE (tiny by default)
    python benchmarks/ch02_moe_dispatch.py --threads 1     # one thread (steadier on a shared machine)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from minillm.core.bench import interleaved_timings, results_path, write_results
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device, seed_everything
from minillm.moe import Expert, SparseMoE
from minillm.moe.config import moe_config
from minillm.moe.dispatch import dispatch

NAME = "ch02_moe_dispatch"
COMMAND = f"python benchmarks/{NAME}.py"
STRATEGIES = ("masked_loop", "sorted", "batched", "dense")
MODES = ("dispatch", "dispatch_train", "forward", "train")
#: tokens per call: decoding steps of 8 and 64 sequences, the chapter's training batch (32 × 64 = 2,048), and between
TOKEN_COUNTS = {"tiny": (8, 64, 512, 2048), "full": (8, 64, 512, 2048, 8192)}
TOLERANCE = 1e-5
#: what the chapter aims for: the batched dispatch within these multiples of the floor
FLOOR_GOAL = {"decoding (8-64 tokens)": 1.6, "batches (512 tokens and more)": 1.3}


def goal_for(n_tokens: int) -> float:
    return FLOOR_GOAL["decoding (8-64 tokens)"] if n_tokens <= 64 else FLOOR_GOAL["batches (512 tokens and more)"]


def separate_experts(bank) -> torch.nn.ModuleList:
    """The bank's experts as makeMoE stores them: separate Expert modules holding copies of the same weights."""
    experts = torch.nn.ModuleList(Expert(bank.n_embd, bank.hidden, activation=bank.activation) for _ in range(len(bank)))
    with torch.no_grad():
        for e, expert in enumerate(experts):
            for i, fc in ((1, expert.fc1), (2, expert.fc2)):
                fc.weight.copy_(getattr(bank, f"w{i}")[e])
                fc.bias.copy_(getattr(bank, f"b{i}")[e])
    return experts.to(bank.w1.device)


def compare_at(n_embd: int, hidden: int, activation: str, n_tokens: int, device: torch.device, rounds: int) -> dict:
    """Equality check and timings of every variant for one token count (see the module doc)."""
    E, k = 8, 2
    layer = SparseMoE(n_embd, n_experts=E, top_k=k, hidden=hidden, dropout=0.0, activation=activation).to(device)
    layer.eval()
    bank = layer.experts
    experts = separate_experts(bank)  # makeMoE's storage, the same numbers
    x = torch.randn(1, n_tokens, n_embd, device=device)
    flat = x.view(n_tokens, n_embd)
    with torch.no_grad():
        routing = layer.router(flat)
    idx, gates = routing.expert_idx, routing.gates
    per_expert = torch.bincount(idx.reshape(-1), minlength=E)
    padding = E * int(per_expert.max()) / (n_tokens * k)
    storage = {"masked_loop": experts, "sorted": experts, "dense": experts, "batched": bank}
    with torch.no_grad():
        outputs = {s: dispatch(s, flat, storage[s], idx, gates) for s in STRATEGIES}
    max_diff = {s: (outputs[s] - outputs["masked_loop"]).abs().max().item() for s in STRATEGIES}
    if max(max_diff.values()) > TOLERANCE:
        raise AssertionError(f"dispatch strategies disagree at {n_tokens} tokens: {max_diff}")

    slots = torch.randn(E, n_tokens * k // E, n_embd, device=device)  # balanced and grouped: the floor's input
    slots_train = slots.clone().requires_grad_(True)
    x_train, gates_train = flat.clone().requires_grad_(True), gates.clone().requires_grad_(True)
    grad_out, grad_slots = torch.randn_like(flat), torch.randn_like(slots)
    params = list(bank.parameters()) + list(experts.parameters())

    def infer(s):
        def run():
            with torch.no_grad():
                if s == "floor":
                    bank(slots)
                else:
                    dispatch(s, flat, storage[s], idx, gates)
        return run

    def train_dispatch(s):
        def run():
            for p in params:
                p.grad = None
            if s == "floor":
                bank(slots_train).backward(grad_slots)
            else:
                dispatch(s, x_train, storage[s], idx, gates_train).backward(grad_out)
        return run

    def layer_forward(s):
        def run():
            layer.dispatch = s
            with torch.no_grad():
                layer(x)
        return run

    x_layer = x.clone().requires_grad_(True)

    def layer_train(s):
        def run():
            layer.dispatch = s
            layer.zero_grad(set_to_none=True)
            layer(x_layer).backward(grad_out.view_as(x))
        return run

    names = ("floor", *STRATEGIES) if n_tokens <= 4096 else ("floor", "masked_loop", "sorted", "batched")
    layer_names = tuple(s for s in names if s != "floor")
    row = {"max_abs_diff_vs_masked_loop": max_diff, "padding": padding, "busiest_expert_count": int(per_expert.max()),
           "uniform_count": n_tokens * k / E}
    cpu0 = time.process_time()
    for mode, make, variants in (("dispatch", infer, names), ("dispatch_train", train_dispatch, names),
                                 ("forward", layer_forward, layer_names), ("train", layer_train, layer_names)):
        t = interleaved_timings({s: make(s) for s in variants}, device, rounds)
        row[mode] = {s: {**t[s], "tokens_per_s": n_tokens / t[s]["min_s"]} for s in variants}
        base = row[mode]["masked_loop"]["min_s"]
        row[mode]["speedup_vs_masked_loop"] = {s: base / row[mode][s]["min_s"] for s in variants if s != "masked_loop"}
        if "floor" in row[mode]:
            floor = row[mode]["floor"]
            row[mode]["over_floor"] = {s: row[mode][s]["min_s"] / floor["min_s"] for s in STRATEGIES if s in variants}
            row[mode]["over_floor_median"] = {s: row[mode][s]["median_s"] / floor["median_s"] for s in STRATEGIES
                                              if s in variants}
    row["cpu_s"] = time.process_time() - cpu0
    layer.dispatch = "batched"
    return row


def run(device: torch.device, quick: bool = False) -> dict:
    profile = current_profile()
    cfg = moe_config(profile.pick("moe-tiny", "makemoe"), vocab_size=65)
    seed_everything(0)
    counts = (8, 64) if quick else TOKEN_COUNTS[profile.name]
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    by_tokens = {}
    for n in tqdm(counts, desc="token counts", disable=quick):
        rounds = 5 if quick else (400 if n <= 64 else 100 if n <= 512 else 40)
        by_tokens[str(n)] = compare_at(cfg.n_embd, cfg.hidden, cfg.activation, n, device, rounds)
        by_tokens[str(n)]["rounds"] = rounds
    ratio = {n: {mode: row[mode]["over_floor"]["batched"] for mode in ("dispatch", "dispatch_train")}
             for n, row in by_tokens.items()}
    return {
        "benchmark": NAME,
        "profile": profile.name,
        "config": {"n_embd": cfg.n_embd, "expert_hidden": cfg.hidden, "activation": cfg.activation, "n_experts": 8,
                   "top_k": 2, "routing": "the router at initialisation (near-uniform load)"},
        "token_counts": list(counts),
        "tolerance": TOLERANCE,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "load_average": {"before": list(load_before) if load_before else None,
                         "after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0,
        "by_tokens": by_tokens,
        "headline": {
            "batched_over_floor": ratio,
            "floor_goal": {n: goal_for(int(n)) for n in by_tokens},
            "within_goal": {n: all(r <= goal_for(int(n)) for r in ratio[n].values()) for n in ratio},
            "padding": {n: row["padding"] for n, row in by_tokens.items()},
            "batched_speedup_vs_masked_loop": {n: {mode: row[mode]["speedup_vs_masked_loop"]["batched"]
                                                   for mode in MODES} for n, row in by_tokens.items()},
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
            speeds = "  ".join(f"{s} {row[mode][s]['min_s'] * 1e6:9.1f}" for s in ("floor", *STRATEGIES) if s in row[mode])
            floor = row[mode].get("over_floor", {}).get("batched")
            extra = f"  batched/floor {floor:.2f}" if floor else ""
            print(f"N={n:>5s} {mode:14s} µs: {speeds}   batched vs masked loop x{row[mode]['speedup_vs_masked_loop']['batched']:.2f}{extra}")
        print(f"        padding {row['padding']:.2f} (busiest expert {row['busiest_expert_count']} of "
              f"{row['uniform_count']:.0f} per expert if uniform)")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(0 if main() else 1)
