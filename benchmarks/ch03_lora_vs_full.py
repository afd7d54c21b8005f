"""Benchmark: full fine-tuning vs LoRA (r=8, alpha=16, all linear layers) on the pretrained MiniLM classifier.

For each method, in a fresh process (so one method's memory cannot hide in the other's peak):
trainable parameters, training-step throughput (examples/s and tokens/s, median of timed steps), peak memory
(CUDA: ``max_memory_allocated``; CPU: the process's peak resident set minus its resident set before the
first step — the weights were resident before, so this growth is to be compared with the *rest* of the
training state, gradients + AdamW moments, plus the activations), the exact bytes of weights + gradients +
AdamW state, the activations autograd saves for one step (exact, ``saved_activation_bytes``; LoRA with and
without its dropout), and the checkpoint each method has to store (the whole model versus the adapter file),
measured on disk. Then inference latency of the base model, the unmerged LoRA model and the merged one,
timed in turn round after round (``interleaved_timings``), so load from other processes hits all three alike.

Writes benchmarks/results/ch03_lora_vs_full-<profile>-<device>.json. Run:

    python benchmarks/ch03_lora_vs_full.py                     # profile from MINILLM_PROFILE (tiny by default)
    MINILLM_PROFILE=full python benchmarks/ch03_lora_vs_full.py --device cuda
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_model

from minillm.core.bench import interleaved_timings, results_path, time_call, write_results
from minillm.core.memory import saved_activation_bytes, training_state_bytes
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
    state = training_state_bytes(model, optimizer).as_dict()
    activations = saved_activation_bytes(model, lambda: model(**batch).loss)
    return {"method": method, "trainable_params": report.trainable, "total_params": report.total,
            "examples_per_s": batch_size / timing["median_s"], "tokens_per_s": batch_size * seq_len / timing["median_s"],
            "step_timing": timing, "peak_memory_bytes": peak, "memory_before_bytes": before,
            "peak_memory_kind": peak_kind, "training_state_bytes": state,
            "state_beyond_weights_bytes": state["gradients"] + state["optimizer"],
            "saved_activation_bytes": activations}


def activation_bytes_by_dropout(batch_size: int, seq_len: int) -> dict:
    """Exact activation bytes of one LoRA training step with the recipe's adapter dropout and without it."""
    out = {}
    for dropout in (LORA_RECIPE.dropout, 0.0):
        model, tokenizer = load_minilm_classifier(seed=0)
        inject_lora(model, dataclasses.replace(LORA_RECIPE, dropout=dropout))
        model.train()
        batch = _batch(tokenizer, batch_size, seq_len, torch.device("cpu"))
        out[f"lora_dropout_{dropout:g}"] = saved_activation_bytes(model, lambda: model(**batch).loss)
    model, tokenizer = load_minilm_classifier(seed=0)
    model.train()
    out["full"] = saved_activation_bytes(model, lambda: model(**_batch(tokenizer, batch_size, seq_len,
                                                                        torch.device("cpu"))).loss)
    return out


def checkpoint_sizes(folder: Path) -> dict:
    """What each method must store after training, written and measured on disk."""
    model, _ = load_minilm_classifier(seed=0)
    full = folder / "full_model.safetensors"
    save_model(model, str(full))
    inject_lora(model, LORA_RECIPE)
    adapter = save_adapter(model, folder / "adapter.safetensors")
    return {"full_model_bytes": full.stat().st_size, "adapter_bytes": adapter.stat().st_size,
            "adapter_fraction": adapter.stat().st_size / full.stat().st_size}


def inference_latency(device: torch.device, batch_size: int, seq_len: int, rounds: int) -> dict:
    """Forward time of the base model, LoRA unmerged (two extra small matmuls per layer) and merged, interleaved."""
    base, tokenizer = load_minilm_classifier(seed=0)
    base.to(device).eval()
    unmerged = copy.deepcopy(base)
    inject_lora(unmerged, LORA_RECIPE)
    merged = copy.deepcopy(unmerged)
    merge_lora(merged, safe_merge=True)
    batch = _batch(tokenizer, batch_size, seq_len, device)
    batch.pop("labels")

    def forward(model):
        def run():
            with torch.inference_mode():
                model(**batch)
        return run

    models = {"base": base, "lora_unmerged": unmerged.to(device).eval(), "lora_merged": merged.to(device).eval()}
    return interleaved_timings({name: forward(m) for name, m in models.items()}, device, rounds=rounds)


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
    latency = inference_latency(device, batch_size, seq_len, rounds=4 * steps)
    activations = activation_bytes_by_dropout(batch_size, seq_len)
    results = {"benchmark": "lora_vs_full", "profile": profile.name,
               "config": {"batch_size": batch_size, "seq_len": seq_len, "timed_steps": steps,
                          "lora": {"r": LORA_RECIPE.r, "alpha": LORA_RECIPE.alpha,
                                   "target_modules": "all-linear"}},
               "methods": methods, "checkpoints": sizes, "inference": latency,
               "activation_bytes": activations}
    path = write_results(results_path(NAME, profile.name, device), results, device)
    print(f"adapter file: {100 * sizes['adapter_fraction']:.2f}% of the full checkpoint; wrote {path}")
    return path


if __name__ == "__main__":
    main()
