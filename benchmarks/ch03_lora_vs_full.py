"""Benchmark: full fine-tuning vs LoRA (r=8, alpha=16, all linear layers) on the pretrained MiniLM classifier.

For each method, in a fresh process (so one method's memory cannot hide in the other's peak):
trainable parameters, training-step throughput (examples/s and tokens/s, median of timed steps), peak memory
(CUDA: ``max_memory_allocated``; CPU: the process's peak resident set minus its resident set before the
first step), the exact bytes of weights + gradients + AdamW state, and the checkpoint each method has to
store (the whole model versus the adapter file), measured on disk. Then inference latency of the base model,
the unmerged LoRA model and the merged one.

Writes benchmarks/results/lora-<profile>-<device>.json. Run:

    python benchmarks/ch03_lora_vs_full.py                     # profile from MINILLM_PROFILE (tiny by default)
    MINILLM_PROFILE=full python benchmarks/ch03_lora_vs_full.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_model

from minillm.core.bench import results_path, time_call, write_results
from minillm.core.memory import training_state_bytes
from minillm.core.training import make_adamw
from minillm.lora import LORA_RECIPE, inject_lora, merge_lora, save_adapter, trainable_report
from minillm.pretrained import load_minilm_classifier
from minillm.core.profile import current_profile
from minillm.core.runtime import pick_device, seed_everything

NAME = "ch03_lora_vs_full"
COMMAND = f"python benchmarks/{NAME}.py"
#: (batch size, sequence length, timed steps) per profile.
SETTINGS = {"tiny": (16, 48, 5), "full": (32, 128, 20)}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's resident set (Linux >= 4.0), if allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _batch(tokenizer, batch_size: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tokenizer.vocab_size, (batch_size, seq_len), generator=g)  # (B, T)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 2, (batch_size,), generator=g).to(device)}


def measure(method: str, device: torch.device, batch_size: int, seq_len: int, steps: int) -> dict:
    """One method's training cost, measured in this process."""
    seed_everything(0)
    model, tokenizer = load_minilm_classifier(seed=0)
    if method == "lora":
        inject_lora(model, LORA_RECIPE)
    model.to(device).train()
    batch = _batch(tokenizer, batch_size, seq_len, device)
    optimizer = make_adamw(model, 1e-5, 0.01, fused=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    rss_before, peak_was_reset = _rss_bytes(), _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    timing = time_call(step, device, warmup=2, repeats=steps)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        peak_kind = "torch.cuda.max_memory_allocated (whole process)"
    else:
        peak = _peak_rss_bytes() - rss_before
        before = 0
        peak_kind = "peak resident set during the steps minus resident set before the first step" + (
            "" if peak_was_reset else " (peak not reset: includes loading the model)")
    report = trainable_report(model)
    return {"method": method, "trainable_params": report.trainable, "total_params": report.total,
            "examples_per_s": batch_size / timing["median_s"], "tokens_per_s": batch_size * seq_len / timing["median_s"],
            "step_timing": timing, "peak_memory_bytes": peak, "memory_before_bytes": before,
            "peak_memory_kind": peak_kind, "training_state_bytes": training_state_bytes(model, optimizer).as_dict()}


def checkpoint_sizes(folder: Path) -> dict:
    """What each method must store after training, written and measured on disk."""
    model, _ = load_minilm_classifier(seed=0)
    full = folder / "full_model.safetensors"
    save_model(model, str(full))
    inject_lora(model, LORA_RECIPE)
    adapter = save_adapter(model, folder / "adapter.safetensors")
    return {"full_model_bytes": full.stat().st_size, "adapter_bytes": adapter.stat().st_size,
            "adapter_fraction": adapter.stat().st_size / full.stat().st_size}


def inference_latency(device: torch.device, batch_size: int, seq_len: int, repeats: int) -> dict:
    """Forward time of the base model, LoRA unmerged (two extra small matmuls per layer) and merged."""
    model, tokenizer = load_minilm_classifier(seed=0)
    model.to(device).eval()
    batch = _batch(tokenizer, batch_size, seq_len, device)
    batch.pop("labels")

    def forward():
        with torch.inference_mode():
            model(**batch)

    out = {"base": time_call(forward, device, repeats=repeats)}
    inject_lora(model, LORA_RECIPE)
    model.to(device).eval()
    out["lora_unmerged"] = time_call(forward, device, repeats=repeats)
    merge_lora(model)
    out["lora_merged"] = time_call(forward, device, repeats=repeats)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--worker", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = pick_device(args.device)
    profile = current_profile()
    if device.type == "cpu":
        torch.set_num_threads(2)
    batch_size, seq_len, steps = SETTINGS[profile.name]
    if args.worker:  # child process: measure one method, print JSON
        print(json.dumps(measure(args.worker, device, batch_size, seq_len, steps)))
        return Path()
    methods = {}
    for method in ("full", "lora"):
        cmd = [sys.executable, __file__, "--worker", method, "--device", str(device)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"measuring {method} failed:\n{done.stderr[-2000:]}")
        methods[method] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{method}: {methods[method]['examples_per_s']:.1f} examples/s, "
              f"peak {methods[method]['peak_memory_bytes'] / 2**20:.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        sizes = checkpoint_sizes(Path(tmp))
    latency = inference_latency(device, batch_size, seq_len, repeats=steps)
    results = {"benchmark": "lora_vs_full", "profile": profile.name,
               "config": {"batch_size": batch_size, "seq_len": seq_len, "timed_steps": steps,
                          "lora": {"r": LORA_RECIPE.r, "alpha": LORA_RECIPE.alpha,
                                   "target_modules": "all-linear"}},
               "methods": methods, "checkpoints": sizes, "inference": latency}
    path = write_results(results_path(NAME, profile.name, device), results, device)
    print(f"adapter file: {100 * sizes['adapter_fraction']:.2f}% of the full checkpoint; wrote {path}")
    return path


if __name__ == "__main__":
    main()
