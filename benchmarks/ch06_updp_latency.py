"""Latency of UPDP depth pruning: baseline vs pruned subnet (unmerged) vs merged subnet, batch 128.

Latency does not depend on the weight values, so each model is built from the profile's preset with
seeded random weights and BN statistics; the pruned subnet prunes the preset's ``pruned_blocks`` blocks,
spread evenly over the depth (the notebook's searched subnet prunes as many, so it costs the same). The merged
model is produced by the package's reparameterisation and checked equal to the unmerged subnet first.

    .venv/bin/python benchmarks/ch06_updp_latency.py                # CPU (or the GPU when one is present)
    MINILLM_PROFILE=full .venv/bin/python benchmarks/ch06_updp_latency.py

Writes ``benchmarks/results/updp_latency-<profile>-<cpu|cuda>.json``.
"""

from __future__ import annotations

import argparse

import torch

from minillm.core.bench import results_path, time_call, write_results
from minillm.core.profile import current_profile
from minillm.prune import UPDP_FULL, UPDP_TINY, ResCNN, TinyViT, count_layers, recalibrate_bn
from minillm.core.runtime import pick_device, seed_everything

NAME = "ch06_updp_latency"


def spread_mask(n: int, k: int) -> tuple[bool, ...]:
    """``k`` pruned blocks spread evenly over ``n`` (latency only depends on how many)."""
    picks = {round(i * (n - 1) / max(1, k - 1)) for i in range(k)} if k > 1 else {0}
    return tuple(i in picks for i in range(n))


def measure(make, cfg, k: int, batch: int, image: int, device: torch.device, repeats: int) -> dict:
    x = torch.randn(batch, 1, image, image)
    baseline = make(cfg)
    recalibrate_bn(baseline, x, batches=2)
    subnet = make(cfg)
    subnet.set_subnet(spread_mask(subnet.num_blocks, k))
    subnet.set_lambda(1.0)
    recalibrate_bn(subnet, x, batches=2)
    baseline.eval(), subnet.eval()
    merged = subnet.merged()
    with torch.no_grad():
        err = float((merged(x) - subnet(x)).abs().max() / subnet(x).abs().max())
    if err > 1e-5:
        raise AssertionError(f"merged model differs from the subnet by {err:.2e} (relative)")
    rows = {}
    xd = x.to(device)
    for label, model in (("baseline", baseline), ("subnet_unmerged", subnet), ("merged", merged)):
        model = model.to(device)
        with torch.inference_mode():
            timing = time_call(lambda: model(xd), device=device, warmup=5, repeats=repeats)
        rows[label] = {**timing, "ms_per_batch": 1e3 * timing["median_s"],
                       "layers": count_layers(model, xd), "params": sum(p.numel() for p in model.parameters())}
    return {"mask": list(spread_mask(baseline.num_blocks, k)), "merge_rel_err": err, "models": rows,
            "speedup_merged_vs_baseline": rows["baseline"]["median_s"] / rows["merged"]["median_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2, as the chapters)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    profile = current_profile()
    device = pick_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    seed_everything(0)
    cfg = current_profile().pick(UPDP_TINY, UPDP_FULL)
    image = {"digits": 8, "fashion-mnist": 28}[cfg.data]
    results = {"profile": profile.name, "batch": args.batch, "data": cfg.data, "pruned_blocks": cfg.pruned_blocks,
               "cnn": measure(ResCNN, cfg.cnn, cfg.pruned_blocks, args.batch, image, device, args.repeats),
               "vit": measure(TinyViT, cfg.vit, max(1, cfg.vit.depth // 2), args.batch, image, device,
                              args.repeats)}
    path = write_results(results_path(NAME, profile.name, device), results, device)
    for arch in ("cnn", "vit"):
        for label, row in results[arch]["models"].items():
            print(f"{arch:3s} {label:16s} {row['ms_per_batch']:8.3f} ms/batch  weight layers "
                  f"{row['layers']['weight']:3d}  all layers {row['layers']['total']:3d}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
