"""The course's benchmarks: one list, used by ``make bench`` (this machine) and by the GPU check.

Each entry is a script ``benchmarks/<name>.py`` that writes ``benchmarks/results/<name>-<profile>-<device>.json``
(script name = result name). The list is ordered by what a run on scarce hardware should measure first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    name: str                   # script stem and result name
    chapter: int
    devices: tuple[str, ...]    # where it is meaningful: "cpu", "cuda"
    measures: str


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("ch05_quant_matmul_gpu", 5, ("cuda",), "Triton packed low-bit matmul against fp16 torch.matmul"),
    Benchmark("ch01_attention", 1, ("cpu", "cuda"), "attention layer throughput: loop, batched, SDPA; KV-cache decoding"),
    Benchmark("ch02_moe_dispatch", 2, ("cpu", "cuda"), "MoE dispatch strategies against the experts' matmul floor"),
    Benchmark("ch03_lora_vs_full", 3, ("cpu", "cuda"), "LoRA versus full fine-tuning: memory, speed, checkpoint size"),
    Benchmark("ch04_grad_accumulation", 4, ("cpu", "cuda"), "batch 1, accumulation 16, batch 16: memory and speed"),
    Benchmark("ch06_updp_latency", 6, ("cpu", "cuda"), "UPDP: latency of baseline, pruned and merged models"),
    Benchmark("ch05_gptq_cpu", 5, ("cpu",), "GPTQ against the straightforward algorithm and OBQ, on the CPU"),
)


def for_device(device: str) -> list[Benchmark]:
    """The benchmarks meaningful on ``device`` ("cpu" or "cuda"), in the list's order."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return [b for b in BENCHMARKS if device in b.devices]
