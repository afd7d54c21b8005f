"""Timing helpers for the benchmark scripts, and where their JSON results live.

Throughput is ``tokens / median(seconds per call)`` over repeated calls after warm-up; on a GPU the
device is synchronised around each call so the clock sees the kernels, not just their launch.
Every result file records :func:`minillm.core.runtime.machine_info`, so a figure names its device.

Defined in the foundation; every chapter's benchmark writes through :func:`write_results`.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from minillm.core.paths import results_dir as default_results_dir
from minillm.core.runtime import machine_info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 3,
              repeats: int = 10) -> dict[str, float]:
    """Seconds per call of ``fn``: median, min and max over ``repeats`` timed calls."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeats": repeats}


def interleaved_timings(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", rounds: int = 30,
                        warmup: int = 2) -> dict[str, dict]:
    """Seconds per call of each function, calling them in turn ``rounds`` times: min and median.

    Interleaving makes a burst of load from other processes hit every variant alike, so ratios between
    them stay meaningful on a shared machine.
    """
    device = torch.device(device)
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


def results_path(name: str, profile: str, device: torch.device | str, results_dir: Path | None = None) -> Path:
    """``<results>/<name>-<profile>-<cpu|cuda>.json``; ``<name>`` is the benchmark script's stem.

    ``<results>`` is ``results_dir`` if given, else :func:`minillm.core.paths.results_dir`
    (``benchmarks/results`` of the checkout, or ``$MINILLM_RESULTS``).
    """
    return (results_dir if results_dir is not None else default_results_dir()) / f"{name}-{profile}-{torch.device(device).type}.json"


def write_results(path: Path, results: dict, device: torch.device | str) -> Path:
    """Write ``results`` plus the machine description as JSON."""
    payload = {"machine": machine_info(device), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def read_results(path: Path, command: str) -> dict:
    """Load a result file, or explain which command makes it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist yet; produce it with:\n  {command}")
    return json.loads(Path(path).read_text())
