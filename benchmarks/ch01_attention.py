"""Benchmark: per-head loop vs batched attention vs SDPA, SDPA's backends, and decoding speed against length.

Three measurements, each interleaving its variants round by round (``minillm.core.bench.interleaved_timings``) so a
burst of load from other processes hits all of them alike, and each recording the machine's load average and the
process's CPU time beside the wall time. Throughput (``tokens_per_s``) comes from each variant's fastest round, the one
least slowed by other programs; every round's seconds are kept, so ratios can be judged round by round:

* ``attention``: one attention layer of the profile's size, forward and forward + backward, at several batch sizes.
* ``sdpa_backends``: ``scaled_dot_product_attention`` with each backend the device offers, selected one at a time
  with ``torch.nn.attention.sdpa_kernel`` (a CPU has the math one, which materialises the T×T weights, and a flash
  one, which works in tiles), at sequence lengths up to 16× the window, with the memory allocated inside one call and
  the largest tensor any operation inside it touched.
* ``decoding``: greedy tokens/s against the number of generated tokens, up to 4× the context window, for
  ``recompute`` (learned positions, no cache: crop the context to the last ``block_size`` tokens and run the whole
  model at every step — nanoGPT's loop), ``refill`` (learned positions, KV cache emptied and refilled from the cropped
  context at every step once the window is full) and ``sliding`` (rotary positions, KV cache that slides: one new
  position per step). ``sliding_reference`` is the same rotary model without a cache: one forward pass over the whole
  sequence at every step, the function the sliding cache is proven equal to. Before timing, the script checks that
  refill gives recompute's tokens and sliding gives sliding_reference's.

Writes ``benchmarks/results/ch01_attention-<profile>-<device>.json``. Run:

    python benchmarks/ch01_attention.py            # profile from MINILLM_PROFILE (tiny by default)
    MINILLM_PROFILE=full python benchmarks/ch01_attention.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from minillm.core.bench import interleaved_timings, results_path, write_results
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device, seed_everything
from minillm.gpt import GPT, gpt_config
from minillm.gpt.attention import CausalSelfAttention, NaiveMultiHeadAttention
from minillm.gpt.generation import generate

NAME = "ch01_attention"
COMMAND = f"python benchmarks/{NAME}.py"
BATCH_SIZES = {"tiny": (1, 8, 32), "full": (1, 16, 64)}
DECODE_VARIANTS = ("recompute", "refill", "sliding", "sliding_reference")
BACKENDS = {"cpu": ("math", "flash"), "cuda": ("math", "flash", "efficient", "cudnn")}
_SDP = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION}


@contextmanager
def measured_load(record: dict):
    """Record wall and process CPU seconds, and the 1-minute load average before and after, into ``record``."""
    load_start, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    yield
    record["load"] = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
                      "loadavg_1min_start": load_start, "loadavg_1min_end": os.getloadavg()[0],
                      "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def per_round_times(fns: dict, device: torch.device, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of every round of every variant (the variants called in turn each round), for paired intervals."""
    interleaved_timings(fns, device, rounds=1, warmup=warmup)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, t in interleaved_timings(fns, device, rounds=1, warmup=0).items():
            times[name].append(t["min_s"])
    return times


def _summary(seconds: list[float], work: int) -> dict:
    """Throughput from the fastest round (the one other programs disturbed least), the median beside it."""
    median = statistics.median(seconds)
    return {"min_s": min(seconds), "median_s": median, "max_s": max(seconds), "tokens_per_s": work / min(seconds),
            "tokens_per_s_median": work / median, "seconds": seconds}


def attention_throughput(n_embd: int, n_head: int, block_size: int, batch_size: int, device: torch.device,
                         rounds: int = 20) -> dict:
    """Forward (inference) and forward+backward (training) tokens/s of the three implementations."""
    naive = NaiveMultiHeadAttention(n_embd, n_head, block_size).to(device)
    variants = {
        "naive_loop": naive,
        "batched_manual": CausalSelfAttention.from_naive(naive, backend="manual"),
        "batched_sdpa": CausalSelfAttention.from_naive(naive, backend="sdpa"),
    }
    x = torch.randn(batch_size, block_size, n_embd, device=device)
    reference = naive(x)
    fns = {}
    for name, module in variants.items():
        torch.testing.assert_close(module(x), reference, atol=1e-4, rtol=1e-4)  # same function, or no race

        def forward(m=module):
            with torch.no_grad():
                m(x)

        def train_step(m=module):
            m.zero_grad(set_to_none=True)
            m(x).sum().backward()

        fns[f"{name}/forward"], fns[f"{name}/train"] = forward, train_step
    times = per_round_times(fns, device, rounds)
    tokens = batch_size * block_size
    out = {name: {} for name in variants}
    for key, seconds in times.items():
        name, mode = key.split("/")
        s = _summary(seconds, tokens)
        out[name][f"{mode}_tokens_per_s"] = s["tokens_per_s"]
        out[name][f"{mode}_timing"] = s
    for mode in ("forward", "train"):
        base = out["naive_loop"][f"{mode}_tokens_per_s"]
        for name in ("batched_manual", "batched_sdpa"):
            out[name][f"{mode}_speedup_vs_naive"] = out[name][f"{mode}_tokens_per_s"] / base
    return out


def _available_backends(device: torch.device, q: torch.Tensor) -> list[str]:
    names = []
    for name in BACKENDS[device.type]:
        try:
            with sdpa_kernel(_SDP[name]):
                F.scaled_dot_product_attention(q, q, q, is_causal=True)
            names.append(name)
        except RuntimeError:  # this device or build does not offer it
            pass
    return names


def call_footprint(fn, device: torch.device) -> dict:
    """Bytes allocated inside one call of ``fn``, and the largest tensor (elements) any operation in it touched."""
    from torch.profiler import ProfilerActivity, profile

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=device.type == "cpu", record_shapes=True) as prof:
        fn()
    events = prof.events()
    largest = max((math.prod(s) for e in events for s in (e.input_shapes or []) if s), default=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        allocated = torch.cuda.max_memory_allocated(device) - before
    else:  # the outermost event's allocations include its children's
        allocated = max((e.cpu_memory_usage for e in events), default=0)
    return {"allocated_bytes": int(allocated), "largest_tensor_elements": int(largest)}


def sdpa_backends(n_head: int, head_size: int, lengths: tuple[int, ...], device: torch.device, rounds: int = 10) -> dict:
    """Each SDPA backend on its own: forward and forward+backward tokens/s, and its memory, per sequence length."""
    g = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(1, n_head, 8, head_size).to(device)
    names = _available_backends(device, probe)
    out = {"backends": names, "lengths": list(lengths), "batch_size": 1, "n_head": n_head, "head_size": head_size,
           "results": {}}
    for t in lengths:
        q, k, v = (torch.randn(1, n_head, t, head_size, generator=g).to(device).requires_grad_() for _ in range(3))
        reference = None
        fns, row = {}, {}
        for name in names:
            def forward(name=name):
                with torch.no_grad(), sdpa_kernel(_SDP[name]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)

            def train_step(name=name):
                with sdpa_kernel(_SDP[name]):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
                q.grad = k.grad = v.grad = None

            y = forward()
            reference = y if reference is None else reference
            torch.testing.assert_close(y.float(), reference.float(), atol=1e-4, rtol=1e-4)  # one function
            row[name] = call_footprint(forward, device)
            fns[f"{name}/forward"], fns[f"{name}/train"] = forward, train_step
        for key, seconds in per_round_times(fns, device, rounds).items():
            name, mode = key.split("/")
            row[name][mode] = _summary(seconds, t)
        out["results"][str(t)] = row
    return out


def decoding_vs_length(cfg_learned, cfg_rope, lengths: tuple[int, ...], device: torch.device,
                       rounds: int = 8) -> dict:
    """Greedy decoding from a 1-token prompt: seconds and tokens/s per generated length, per variant."""
    seed_everything(0)
    learned = GPT(cfg_learned).to(device).eval()
    rope = GPT(cfg_rope).to(device).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    runs = {
        "recompute": lambda n: generate(learned, prompt, n, temperature=0.0, use_cache=False),
        "refill": lambda n: generate(learned, prompt, n, temperature=0.0, use_cache=True),
        "sliding": lambda n: generate(rope, prompt, n, temperature=0.0, use_cache=True),
        "sliding_reference": lambda n: generate(rope, prompt, n, temperature=0.0, use_cache=False),
    }
    longest = max(lengths)
    # The timed variants compute what they claim to: the caches change no token.
    assert torch.equal(runs["refill"](longest), runs["recompute"](longest)), "refill cache changed the tokens"
    assert torch.equal(runs["sliding"](longest), runs["sliding_reference"](longest)), "sliding cache changed the tokens"
    out = {"variants": list(DECODE_VARIANTS), "lengths": list(lengths), "block_size": cfg_learned.block_size,
           "prompt_tokens": 1, "batch_size": 1, "results": {}}
    for n in lengths:
        fns = {name: (lambda run=run, n=n: run(n)) for name, run in runs.items()}
        out["results"][str(n)] = {name: _summary(seconds, n)
                                  for name, seconds in per_round_times(fns, device, rounds).items()}
    return out


def run(device: torch.device, quick: bool = False) -> dict:
    profile = current_profile()
    cfg = gpt_config(profile.pick("gpt-tiny", "gpt-shakespeare"), vocab_size=65)
    seed_everything(0)
    w = cfg.block_size
    results = {
        "benchmark": "attention_throughput",
        "profile": profile.name,
        "config": {"n_embd": cfg.n_embd, "n_head": cfg.n_head, "block_size": w, "n_layer": cfg.n_layer},
        # one sequence (the latency-bound case), then larger batches where the matmuls dominate
        "batch_sizes": list(BATCH_SIZES[profile.name]),
    }
    with measured_load(results.setdefault("attention_load", {})):
        results["attention"] = {str(b): attention_throughput(cfg.n_embd, cfg.n_head, w, b, device, 3 if quick else 30)
                                for b in BATCH_SIZES[profile.name]}
    sdpa = {}
    with measured_load(sdpa):
        sdpa.update(sdpa_backends(cfg.n_head, cfg.head_size, (w,) if quick else (w, 4 * w, 16 * w), device,
                                  2 if quick else 10))
    results["sdpa_backends"] = sdpa
    # generated lengths up to 4x the window; --quick keeps one inside and one past it
    decode_lengths = (w // 2, 2 * w) if quick else (w // 4, w // 2, w, 3 * w // 2, 2 * w, 3 * w, 4 * w)
    decoding = {}
    with measured_load(decoding):
        rope_cfg = gpt_config(profile.pick("gpt-tiny", "gpt-shakespeare"), vocab_size=65, position="rope")
        decoding.update(decoding_vs_length(cfg, rope_cfg, decode_lengths, device, 1 if quick else 8))
    results["decoding"] = decoding
    return results


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--out", type=Path, default=None, help="result file (default: benchmarks/results/...)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and lengths (for tests)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, as the chapter notebook)")
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    results = run(device, quick=args.quick)
    path = write_results(args.out or results_path(NAME, results["profile"], device), results, device)
    for batch, rows in results["attention"].items():
        for name, row in rows.items():
            print(f"B={batch:>3s} {name:15s} forward {row['forward_tokens_per_s']:12,.0f} tok/s   "
                  f"train {row['train_tokens_per_s']:12,.0f} tok/s")
    for t, row in results["sdpa_backends"]["results"].items():
        print(f"SDPA T={t:>5s} " + "   ".join(f"{name} {r['forward']['tokens_per_s']:11,.0f} tok/s "
                                              f"{r['allocated_bytes'] / 2**20:6.1f} MiB" for name, r in row.items()))
    for n, row in results["decoding"]["results"].items():
        print(f"decode {n:>5s} tokens: " + "  ".join(f"{name} {r['tokens_per_s']:7,.0f} tok/s" for name, r in row.items()))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
