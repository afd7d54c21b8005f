"""Benchmark: naive per-head loop vs batched attention vs fused SDPA, and KV-cache decoding.

Writes benchmarks/results/attention-<profile>-<device>.json (tokens/s, device name). Run:

    python benchmarks/ch01_attention.py            # profile from MINILLM_PROFILE (tiny by default)
    MINILLM_PROFILE=full python benchmarks/ch01_attention.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from minillm.gpt.attention import CausalSelfAttention, NaiveMultiHeadAttention
from minillm.core.bench import results_path, time_call, write_results
from minillm.gpt.generation import generate
from minillm.gpt import GPT, gpt_config
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device, seed_everything

NAME = "ch01_attention"
COMMAND = f"python benchmarks/{NAME}.py"
BATCH_SIZES = {"tiny": (1, 8, 32), "full": (1, 16, 64)}


def attention_throughput(n_embd: int, n_head: int, block_size: int, batch_size: int, device: torch.device,
                         repeats: int = 10) -> dict:
    """Forward (inference) and forward+backward (training) tokens/s of the three implementations."""
    naive = NaiveMultiHeadAttention(n_embd, n_head, block_size).to(device)
    variants = {
        "naive_loop": naive,
        "batched_manual": CausalSelfAttention.from_naive(naive, backend="manual"),
        "batched_sdpa": CausalSelfAttention.from_naive(naive, backend="sdpa"),
    }
    x = torch.randn(batch_size, block_size, n_embd, device=device)
    tokens = batch_size * block_size
    reference = naive(x)
    out = {}
    for name, module in variants.items():
        torch.testing.assert_close(module(x), reference, atol=1e-4, rtol=1e-4)  # same function, or no race

        def forward(m=module):
            with torch.no_grad():
                m(x)

        def train_step(m=module):
            m.zero_grad(set_to_none=True)
            m(x).sum().backward()

        fwd, bwd = time_call(forward, device, repeats=repeats), time_call(train_step, device, repeats=repeats)
        out[name] = {"forward_tokens_per_s": tokens / fwd["median_s"], "forward_timing": fwd,
                     "train_tokens_per_s": tokens / bwd["median_s"], "train_timing": bwd}
    for mode in ("forward", "train"):
        base = out["naive_loop"][f"{mode}_tokens_per_s"]
        for name in ("batched_manual", "batched_sdpa"):
            out[name][f"{mode}_speedup_vs_naive"] = out[name][f"{mode}_tokens_per_s"] / base
    return out


def decoding_throughput(model: GPT, new_tokens: int, batch_size: int, device: torch.device, repeats: int = 3) -> dict:
    """Tokens/s generating ``new_tokens`` greedily from a 1-token prompt, with and without the KV cache."""
    prompt = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    out = {}
    for use_cache in (False, True):
        timing = time_call(lambda: generate(model, prompt, new_tokens, temperature=0.0, use_cache=use_cache),
                           device, warmup=1, repeats=repeats)
        out["kv_cache" if use_cache else "recompute"] = {"tokens_per_s": batch_size * new_tokens / timing["median_s"],
                                                         "timing": timing}
    out["kv_cache"]["speedup_vs_recompute"] = out["kv_cache"]["tokens_per_s"] / out["recompute"]["tokens_per_s"]
    return out


def run(device: torch.device, quick: bool = False) -> dict:
    profile = current_profile()
    cfg = gpt_config(current_profile().pick("gpt-tiny", "gpt-shakespeare"), vocab_size=65)
    seed_everything(0)
    repeats = 5 if quick else 20
    results = {
        "benchmark": "attention_throughput",
        "profile": profile.name,
        "config": {"n_embd": cfg.n_embd, "n_head": cfg.n_head, "block_size": cfg.block_size},
        # one sequence (the latency-bound case), then larger batches where the matmuls dominate
        "batch_sizes": list(BATCH_SIZES[profile.name]),
        "attention": {str(b): attention_throughput(cfg.n_embd, cfg.n_head, cfg.block_size, b, device, repeats)
                      for b in BATCH_SIZES[profile.name]},
    }
    model = GPT(cfg).to(device).eval()
    new_tokens = cfg.block_size - 1  # the whole window: the cache is never refilled
    results["decoding"] = decoding_throughput(model, new_tokens, batch_size=1, device=device, repeats=2 if quick else 3)
    results["decoding"]["new_tokens"] = new_tokens
    return results


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: benchmarks/results/...)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (for tests)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    results = run(device, quick=args.quick)
    path = write_results(args.out or results_path(NAME, results["profile"], device), results, device)
    for batch, rows in results["attention"].items():
        for name, row in rows.items():
            print(f"B={batch:>3s} {name:15s} forward {row['forward_tokens_per_s']:12,.0f} tok/s   "
                  f"train {row['train_tokens_per_s']:12,.0f} tok/s")
    dec = results["decoding"]
    print(f"decoding: recompute {dec['recompute']['tokens_per_s']:,.0f} tok/s, KV cache {dec['kv_cache']['tokens_per_s']:,.0f} tok/s")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
