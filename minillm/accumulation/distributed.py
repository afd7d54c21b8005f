r"""Data parallelism with gradient accumulation: ``DistributedDataParallel``, ``no_sync`` and global token counts.

:math:`W` processes (*ranks*) each hold a replica of the model and their own micro-batches
:math:`B_{r,1} … B_{r,k}` of one optimizer step, with :math:`n_{r,j}` loss units (target tokens).
``DistributedDataParallel`` (DDP) all-reduces the gradients during every ``backward()`` and divides by
:math:`W`, so every rank ends with :math:`\frac1W \sum_r g_r`. For that to be the gradient of the whole
step's batch, :math:`\frac1N\sum_{r,j}\nabla\sum_{u\in B_{r,j}}\ell_u` with :math:`N=\sum_{r,j} n_{r,j}`, each
rank back-propagates

.. math::

    \mathcal L_{r,j} = \frac{W}{N} \sum_{u \in B_{r,j}} \ell_u ,

with :math:`N` all-reduced before the first micro-batch (a single integer per rank): the factor :math:`W`
undoes DDP's mean. Dividing by the rank's own count :math:`N_r` instead averages per-rank means, which weights a
unit by :math:`1/(W N_r)` — the mean-of-means bug again, now across ranks.

Communication: DDP's all-reduce is only needed once per optimizer step. Inside ``with ddp.no_sync():`` the
backward pass only adds into ``.grad``; the first :math:`k-1` micro-batches run inside it and the last one
outside, so the all-reduce carries the accumulated gradient once instead of :math:`k` times. A communication
hook (:class:`AllReduceCounter`) counts the all-reduces.

Two launchers run the same worker, :func:`data_parallel_worker`: ``torch.multiprocessing`` with a file store
(:func:`run_data_parallel`, ``launcher="spawn"``; what the tests use) and ``torchrun``, which sets ``RANK``,
``WORLD_SIZE`` and ``MASTER_ADDR``/``MASTER_PORT`` for every process, on one machine or several::

    torchrun --nproc_per_node=2 -m minillm.accumulation.distributed --backend gloo --out DIR   # 2 CPU processes
    torchrun --nproc_per_node=8 -m minillm.accumulation.distributed --backend nccl --out DIR   # 8 GPUs
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \
             --rdzv_endpoint=HOST:29500 -m minillm.accumulation.distributed --backend nccl --out DIR

Defined in chapter 4 (gradient accumulation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from minillm.accumulation.accumulate import IGNORE_INDEX, count_units, summed_loss

#: how each rank divides its summed loss: by the all-reduced count times W (correct), by its own count
#: (mean of per-rank means), or by the all-reduced count without the factor W (gradient W times too small)
RANK_NORMALISATIONS = ("global", "local", "global_without_world_size")


@dataclass(frozen=True)
class DataParallelSetup:
    """One data-parallel run: ranks, micro-batches per step and per rank, optimizer steps, and the variant."""

    world_size: int = 2
    accumulation_steps: int = 4
    steps: int = 2
    micro_batch_size: int = 2
    seq_len: int = 24
    lr: float = 0.5  # plain SGD, so a wrongly scaled gradient shows in the weights (Adam would hide a scale)
    seed: int = 0

    def __post_init__(self):
        for name in ("world_size", "accumulation_steps", "steps", "micro_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.seq_len < 4:
            raise ValueError(f"seq_len must be at least 4 tokens, got {self.seq_len}")


def rank_loss_scale(global_units: int, world_size: int, normalisation: str = "global", local_units: int = 0) -> float:
    """The factor a rank multiplies its summed loss by: ``W / N`` (``"global"``), or one of the wrong ones."""
    if normalisation not in RANK_NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {RANK_NORMALISATIONS}, got {normalisation!r}")
    if global_units < 1 or world_size < 1:
        raise ValueError(f"need global_units >= 1 and world_size >= 1, got {global_units} and {world_size}: "
                         "all-reduce the ranks' unit counts before scaling")
    if normalisation == "global":
        return world_size / global_units
    if normalisation == "local":
        if local_units < 1:
            raise ValueError("normalisation='local' needs this rank's own unit count (local_units >= 1)")
        return 1.0 / local_units
    return 1.0 / global_units


def tiny_causal_lm(seed: int = 0) -> torch.nn.Module:
    """The chapter's small ``BloomForCausalLM`` (2 layers, 64 dimensions, no dropout), seeded."""
    from minillm.pretrained.minilm import transformers_module

    transformers = transformers_module()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = transformers.BloomConfig(vocab_size=512, hidden_size=64, n_layer=2, n_head=4, pad_token_id=0,
                                          hidden_dropout=0.0, attention_dropout=0.0)
        return transformers.BloomForCausalLM(config).eval()


def rank_micro_batches(setup: DataParallelSetup, step: int, rank: int) -> list[dict[str, torch.Tensor]]:
    """Rank ``rank``'s micro-batches for optimizer step ``step``: token sequences whose lengths differ a lot
    between ranks (rank 0 holds the longest), so the ranks' token counts differ."""
    g = torch.Generator().manual_seed(setup.seed * 1000 + step * 10 + rank)
    out = []
    for _ in range(setup.accumulation_steps):
        m, t = setup.micro_batch_size, setup.seq_len
        low = max(3, t // (2 + 2 * rank))  # shorter sequences on higher ranks
        lengths = torch.randint(low, max(low + 1, t // (1 + rank)) + 1, (m,), generator=g).clamp(max=t)
        ids = torch.randint(1, 512, (m, t), generator=g)
        mask = (torch.arange(t)[None] < lengths[:, None]).long()  # (m, t), right padding
        out.append({"input_ids": ids * mask, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, IGNORE_INDEX)})
    return out


def full_batch_reference(setup: DataParallelSetup) -> dict[str, torch.Tensor]:
    """What one process computes with all ranks' micro-batches in one batch: the first step's gradient and the
    weights after ``setup.steps`` SGD steps (tensor names prefixed ``grad.`` and ``weight.``)."""
    model = tiny_causal_lm(setup.seed)
    opt = torch.optim.SGD(model.parameters(), lr=setup.lr)
    out = {}
    for step in range(setup.steps):
        batches = [b for r in range(setup.world_size) for b in rank_micro_batches(setup, step, r)]
        total = sum(count_units(b, "tokens") for b in batches)
        opt.zero_grad(set_to_none=True)
        for b in batches:  # all at the same length: accumulating here is the same sum as one concatenated batch
            (summed_loss(model, b, "tokens") / total).backward()
        if step == 0:
            out.update({f"grad.{n}": p.grad.detach().clone() for n, p in model.named_parameters()})
        opt.step()
    out.update({f"weight.{n}": p.detach().clone() for n, p in model.named_parameters()})
    return out


class AllReduceCounter:
    """DDP communication-hook state: how many gradient buckets were all-reduced, and how many bytes."""

    def __init__(self):
        self.calls = 0
        self.bytes = 0


def _counting_allreduce(state, bucket):  # no annotations: DDP checks them against objects, not strings
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state.calls += 1
    state.bytes += bucket.buffer().numel() * bucket.buffer().element_size()
    return allreduce_hook(None, bucket)  # DDP's own all-reduce: sum over ranks, divided by W


def accumulate_data_parallel(ddp_model, micro_batches: list[dict[str, torch.Tensor]], normalisation: str = "global",
                             no_sync: bool = True) -> float:
    """One optimizer step's backward passes on this rank; returns this rank's share of the step's loss.

    The global unit count is all-reduced first; with ``no_sync`` the first ``k-1`` backward passes skip DDP's
    all-reduce, which then runs once, in the last one.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised in this process: call this inside a worker started "
                           "by run_data_parallel or torchrun (after dist.init_process_group)")
    if not hasattr(ddp_model, "no_sync"):
        raise TypeError(f"{type(ddp_model).__name__} is not a DistributedDataParallel model: wrap it first, "
                        "DistributedDataParallel(model), so that backward() all-reduces the gradients")
    if not micro_batches:
        raise ValueError("an optimizer step needs at least one micro-batch on every rank")
    local = sum(count_units(b, "tokens") for b in micro_batches)
    n = torch.tensor([local], dtype=torch.long, device=micro_batches[0]["input_ids"].device)  # nccl: on the GPU
    dist.all_reduce(n)  # N = Σ_r N_r, one integer per rank
    scale = rank_loss_scale(int(n.item()), dist.get_world_size(), normalisation, local)
    total = 0.0
    for j, batch in enumerate(micro_batches):
        skip = no_sync and j < len(micro_batches) - 1
        with ddp_model.no_sync() if skip else nullcontext():
            loss = summed_loss(ddp_model, batch, "tokens") * scale
            loss.backward()
        total += loss.item()
    return total


@dataclass(frozen=True)
class Variant:
    """How one data-parallel run accumulates: with or without ``no_sync``, and the rank normalisation."""

    no_sync: bool = True
    normalisation: str = "global"

    def __post_init__(self):
        if self.normalisation not in RANK_NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {RANK_NORMALISATIONS}, got {self.normalisation!r} "
                             "('global' is the correct one)")

    @property
    def name(self) -> str:
        return f"{'no_sync' if self.no_sync else 'sync every micro-batch'}, {self.normalisation}"


DEFAULT_VARIANTS = (Variant(True, "global"), Variant(False, "global"), Variant(True, "local"),
                    Variant(True, "global_without_world_size"))


def data_parallel_worker(rank: int, world_size: int, setup: DataParallelSetup, variants: tuple[Variant, ...],
                         out_dir: str, device: torch.device | str = "cpu") -> None:
    """Run every variant on this rank (the process group is initialised) and save what rank 0 sees.

    ``device``: ``"cpu"`` with ``gloo``; with ``nccl``, this process's GPU (``cuda:LOCAL_RANK``).
    """
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = torch.device(device)
    torch.set_num_threads(1)
    summary = {}

    def batches(step: int) -> list[dict[str, torch.Tensor]]:
        return [{k: t.to(device) for k, t in b.items()} for b in rank_micro_batches(setup, step, rank)]

    for v, variant in enumerate(variants):
        model = tiny_causal_lm(setup.seed).to(device)  # the same initial weights on every rank
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        counter = AllReduceCounter()
        ddp.register_comm_hook(counter, _counting_allreduce)
        opt = torch.optim.SGD(model.parameters(), lr=setup.lr)
        tensors = {}
        for step in range(setup.steps):
            opt.zero_grad(set_to_none=True)
            accumulate_data_parallel(ddp, batches(step), variant.normalisation, variant.no_sync)
            if step == 0:
                tensors.update({f"grad.{n}": p.grad.detach().cpu().clone() for n, p in model.named_parameters()})
            opt.step()
        tensors.update({f"weight.{n}": p.detach().cpu().clone() for n, p in model.named_parameters()})
        local_tokens = [sum(count_units(b, "tokens") for b in rank_micro_batches(setup, s, rank))
                        for s in range(setup.steps)]
        summary[variant.name] = {"all_reduces": counter.calls, "all_reduce_bytes": counter.bytes,
                                 "local_tokens": local_tokens, **asdict(variant)}
        if rank == 0:
            save_file({k: t.contiguous() for k, t in tensors.items()}, os.path.join(out_dir, f"variant{v}.safetensors"))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(summary))


def _spawned(rank: int, world_size: int, init_file: str, setup, variants, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    try:
        data_parallel_worker(rank, world_size, setup, variants, out_dir)
    finally:
        dist.destroy_process_group()


@dataclass
class VariantResult:
    """What a data-parallel variant did: all-reduces over the run, tokens per rank, and its tensors."""

    variant: Variant
    all_reduces: int
    all_reduce_bytes: int
    tokens_per_rank: list[list[int]]  # [rank][step]
    tensors: dict[str, torch.Tensor]  # "grad.<name>" (first step) and "weight.<name>" (after the run), rank 0

    def max_error(self, reference: dict[str, torch.Tensor], kind: str = "grad") -> float:
        """Largest absolute difference from ``reference`` over the ``grad`` or ``weight`` tensors."""
        return max((self.tensors[k] - reference[k]).abs().max().item() for k in reference if k.startswith(kind + "."))

    def relative_error(self, reference: dict[str, torch.Tensor], kind: str = "grad") -> float:
        keys = [k for k in reference if k.startswith(kind + ".")]
        diff = torch.cat([(self.tensors[k] - reference[k]).flatten() for k in keys])
        return (diff.norm() / torch.cat([reference[k].flatten() for k in keys]).norm()).item()


def _collect(out_dir: Path, world_size: int, variants) -> dict[str, VariantResult]:
    from safetensors.torch import load_file

    summaries = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world_size)]
    results = {}
    for v, variant in enumerate(variants):
        s = summaries[0][variant.name]
        results[variant.name] = VariantResult(variant, s["all_reduces"], s["all_reduce_bytes"],
                                              [summaries[r][variant.name]["local_tokens"] for r in range(world_size)],
                                              load_file(str(out_dir / f"variant{v}.safetensors")))
    return results


def run_data_parallel(setup: DataParallelSetup = DataParallelSetup(), variants: tuple[Variant, ...] = DEFAULT_VARIANTS,
                      launcher: str = "spawn", timeout_s: float = 600.0) -> dict[str, VariantResult]:
    """Run ``setup.world_size`` CPU processes (``gloo``) through every variant; return rank 0's results by name.

    ``launcher="spawn"`` starts the processes with ``torch.multiprocessing`` and a file store;
    ``"torchrun"`` runs ``python -m torch.distributed.run`` on this module, as on a GPU cluster.

    Raises:
        ValueError: an unknown launcher or variant. RuntimeError: a worker failed or did not finish in time.
    """
    if launcher not in ("spawn", "torchrun"):
        raise ValueError(f"launcher must be 'spawn' or 'torchrun', got {launcher!r}")
    if not isinstance(setup, DataParallelSetup):
        raise ValueError(f"setup must be a DataParallelSetup(...), got {type(setup).__name__}")
    if not variants or not all(isinstance(v, Variant) for v in variants):
        raise ValueError(f"variants must be a non-empty tuple of Variant(no_sync, normalisation), got {variants!r}")
    if len({v.name for v in variants}) != len(variants):
        raise ValueError("two variants have the same settings: list each Variant once")
    if not dist.is_available() or not dist.is_gloo_available():
        raise RuntimeError("this PyTorch build has no torch.distributed gloo backend; install the standard build")
    with tempfile.TemporaryDirectory(prefix="minillm-ddp-") as tmp:
        out_dir = Path(tmp)
        if launcher == "spawn":
            import torch.multiprocessing as mp

            ctx = mp.spawn(_spawned, args=(setup.world_size, str(out_dir / "store"), setup, tuple(variants), tmp),
                           nprocs=setup.world_size, join=False)
            deadline = time.monotonic() + timeout_s
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        p.terminate()
                    raise RuntimeError(f"the {setup.world_size} data-parallel workers did not finish within "
                                       f"{timeout_s:.0f} s; a rank is probably waiting for another (raise timeout_s "
                                       "on a slow machine)")
        else:
            spec = json.dumps({"setup": asdict(setup), "variants": [asdict(v) for v in variants]})
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={setup.world_size}", "-m", "minillm.accumulation.distributed",
                   "--backend", "gloo", "--out", tmp, "--spec", spec]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            if done.returncode != 0:
                raise RuntimeError(f"torchrun failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return _collect(out_dir, setup.world_size, variants)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``torchrun``: every process runs this with ``RANK``/``WORLD_SIZE`` in its environment."""
    parser = argparse.ArgumentParser(description="data-parallel gradient accumulation (chapter 4)")
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--out", required=True, help="folder for rank 0's tensors and every rank's summary")
    parser.add_argument("--spec", default=None, help="JSON of the setup and the variants (default: the chapter's)")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec) if args.spec else {}
    dist.init_process_group(args.backend, init_method="env://", timeout=timedelta(seconds=60))
    try:
        world = dist.get_world_size()
        setup = DataParallelSetup(**{**spec.get("setup", {}), "world_size": world})
        variants = tuple(Variant(**v) for v in spec["variants"]) if "variants" in spec else DEFAULT_VARIANTS
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local_rank) if args.backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        data_parallel_worker(dist.get_rank(), world, setup, variants, args.out, device)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
