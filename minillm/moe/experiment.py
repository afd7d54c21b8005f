r"""One measured training run of a MoE (or dense baseline) language model, for the chapter's seeded studies.

A run is fixed by its config, schedule and seed: the seed draws the initial weights and the training batches,
so two models trained with the same seed see the same batches in the same order (a *paired* comparison). Every
``curve_every`` steps the run records the exact validation loss on a fixed slice of the validation split (every
window, no token ever dropped: there is no capacity in evaluation), the tokens seen and the training time so far,
on the wall clock and the process CPU clock, *without* the time spent on these evaluations; for a MoE also the
busiest expert's share of a fixed probe batch (× E) and the router's gate entropy. At the end it records the exact
loss over the whole validation split.

Defined in chapter 2; ``studies/ch02_moe_vs_dense.py`` and ``studies/ch02_routing_init.py`` run it over seeds.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, replace

import torch

from minillm.data.lm_batches import TokenSplits, get_batch
from minillm.gpt.train import LMTrainConfig, evaluate_loss, train_lm
from minillm.moe.config import MoEConfig
from minillm.moe.model import MoELM
from minillm.moe.monitoring import expert_load


def probe_batch(splits: TokenSplits, block_size: int, n: int = 64) -> torch.Tensor:
    """The fixed validation batch whose routing a run watches: (n, block_size) token ids, seed 1."""
    x, _ = get_batch(splits.val, block_size, n, torch.Generator().manual_seed(1))
    return x


def _routing(model: MoELM, probe: torch.Tensor) -> dict:
    stats = expert_load(model, probe)
    ratio = (stats["load"].max(dim=1).values * stats["load"].size(1)).tolist()  # (L,) busiest share × E
    return {"max_load_ratio": max(ratio), "max_load_ratio_mean": sum(ratio) / len(ratio),
            "max_load_ratio_per_layer": ratio, "gate_entropy": float(stats["entropy"].mean()),
            "load": stats["load"].tolist()}


def measured_run(cfg: MoEConfig, train_cfg: LMTrainConfig, seed: int, splits: TokenSplits, tag: str,
                 curve_every: int | None = None, curve_tokens: int = 16_384, full_eval: bool = True) -> dict:
    """Train ``MoELM(cfg)`` from ``seed`` with ``train_cfg`` and return a JSON-ready record (see the module doc)."""
    if not isinstance(cfg, MoEConfig) or not isinstance(train_cfg, LMTrainConfig):
        raise TypeError(f"measured_run needs a MoEConfig and an LMTrainConfig, got {type(cfg).__name__} and "
                        f"{type(train_cfg).__name__}; build them with moe_config() and MOE_TRAIN_TINY")
    if curve_every is not None and (isinstance(curve_every, bool) or not isinstance(curve_every, int)
                                    or curve_every < 1):
        raise ValueError(f"curve_every must be a positive number of steps or None (no curve), got {curve_every!r}")
    torch.manual_seed(seed)
    model = MoELM(cfg)
    train_cfg = replace(train_cfg, seed=seed, eval_interval=curve_every or train_cfg.max_iters, eval_iters=1)
    probe = probe_batch(splits, cfg.block_size)
    curve_data = splits.val[:curve_tokens]
    curve: dict[str, list] = {"iters": [], "tokens": [], "wall_s": [], "cpu_s": [], "val_subset": [],
                              "max_load_ratio": [], "gate_entropy": []}
    spent = {"wall": 0.0, "cpu": 0.0}  # time spent in these evaluations, taken off the training clocks

    def callback(it: int, m: MoELM) -> dict[str, float]:
        w0, c0 = time.perf_counter(), time.process_time()
        curve["iters"].append(it)
        curve["tokens"].append(it * train_cfg.batch_size * cfg.block_size)
        curve["wall_s"].append(w0 - start_wall - spent["wall"])
        curve["cpu_s"].append(c0 - start_cpu - spent["cpu"])
        curve["val_subset"].append(evaluate_loss(m, curve_data, cfg.block_size) if curve_every else None)
        routing = _routing(m, probe) if m.moe_layers else {}
        curve["max_load_ratio"].append(routing.get("max_load_ratio"))
        curve["gate_entropy"].append(routing.get("gate_entropy"))
        spent["wall"] += time.perf_counter() - w0
        spent["cpu"] += time.process_time() - c0
        return {}

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    history = train_lm(model, splits, train_cfg, progress=False, eval_callback=callback)
    record = {
        "tag": tag, "seed": seed, "config": asdict(cfg), "train": asdict(train_cfg),
        "params": {"total": model.num_params(), "active": model.num_active_params()},
        "train_wall_s": curve["wall_s"][-1], "train_cpu_s": curve["cpu_s"][-1],
        "tokens": history.tokens_seen, "threads": torch.get_num_threads(),
        "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "final_batch_loss": sum(history.batch_loss[-20:]) / len(history.batch_loss[-20:]),
        "curve": curve if curve_every else None,
    }
    if full_eval:
        record["val_loss"] = evaluate_loss(model, splits.val, cfg.block_size)  # exact, whole split, no drops
    record["routing"] = _routing(model, probe) if model.moe_layers else None
    return record


def limit_heap_fragmentation() -> None:
    """Ask glibc to serve large blocks with mmap, so that many MoE runs in one process do not bloat the heap.

    The dispatch's buffers change size with the routing at every step; glibc's default thresholds then keep
    freed blocks and a study's peak memory grows run after run (5 GB after 20 runs here). Elsewhere a no-op.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    limit_heap_fragmentation()


def _run_one(item: dict) -> dict:
    return measured_run(**item)


def run_plan(plan: list[dict], splits: TokenSplits, save, runs: list[dict], log=print, jobs: int = 1,
             threads: int = 1) -> list[dict]:
    """Run every entry of ``plan`` (keyword arguments of :func:`measured_run`) not already in ``runs``.

    A run is identified by its tag, seed and learning rate; ``save(runs)`` is called after each one, so an
    interrupted study keeps what it finished and a resumed one skips it. With ``jobs > 1`` the runs go to that many
    worker processes of ``threads`` threads each (a run's result does not depend on which worker trains it).
    """
    def key(tag, seed, lr):
        return tag, int(seed), float(lr)

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive number of worker processes, got {jobs!r}")
    done = {key(r["tag"], r["seed"], r["train"]["learning_rate"]) for r in runs}
    todo = [dict(splits=splits, **item) for item in plan
            if key(item["tag"], item["seed"], item["train_cfg"].learning_rate) not in done]
    started = time.time()
    if jobs == 1:
        results = map(_run_one, todo)
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(min(jobs, len(todo)) or 1, _worker_init, (threads,))
        results = pool.imap_unordered(_run_one, todo)
    for record in results:
        runs.append(record)
        save(runs)
        val = record.get("val_loss", record["curve"]["val_subset"][-1] if record["curve"] else float("nan"))
        log(f"[{time.time() - started:6.0f} s] {record['tag']:>16s} seed {record['seed']} lr "
            f"{record['train']['learning_rate']:.0e}: val {val:.4f}, {record['train_wall_s']:.0f} s wall, "
            f"{record['train_cpu_s']:.0f} s CPU, load {record['load_average'][0]}")
    if jobs > 1:
        pool.close()
        pool.join()
    return runs
