"""Chapter 6's two claims over seeds: does supernet fitness rank the subnets as fine-tuning does (the paper's
Table 5, done over *every* subnet), and does progressive training beat direct pruning (its Table 6)?

For each seed ``s``: train a baseline, train a supernet from it (sandwich rule), score every subnet that prunes
``k`` of the ``n`` blocks — its *fitness* ``f`` is the supernet's validation accuracy after BatchNorm
recalibration — run the genetic search, and fine-tune every subnet from the baseline twice, progressively
(λ: 0 → 1) and directly (λ = 1), measuring test accuracy ``a_prog`` and ``a_direct``. Per seed,

    ρ_s = Spearman(f, a_prog)  over the C(n, k) subnets,        Δ_s = mean_subnets (a_prog − a_direct),

and the intervals bootstrap over seeds: the seed is the unit that repeats (every subnet of one seed shares its
baseline and supernet, so subnets of one seed are not independent draws).

Defined in chapter 6 (UPDP depth pruning).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch
from tqdm import tqdm

from minillm.core.claims import Interval, assert_claim, bootstrap_ci, paired_difference, run_seeds
from minillm.data.images import ImageData
from minillm.prune.models import PrunableModel, ResCNN
from minillm.prune.progressive import UPDPConfig, describe_mask, train_subnet
from minillm.prune.search import all_masks, genetic_search
from minillm.prune.supernet import subnet_fitness, train_supernet
from minillm.prune.training import image_accuracy, train_image_classifier


@dataclass(frozen=True)
class SubnetStudyConfig:
    """The UPDP budgets of one seed, and how many seeds (``first_seed``, ``first_seed + 1``, ...)."""

    updp: UPDPConfig
    seeds: int = 8
    first_seed: int = 0

    SMOKE_CAPS: ClassVar[dict[str, int]] = {"seeds": 2}

    def __post_init__(self):
        if not isinstance(self.seeds, int) or self.seeds < 2:
            raise ValueError(f"an interval over seeds needs seeds >= 2, got {self.seeds!r}.")


def spearman(a, b) -> float:
    """Rank correlation (average ranks for ties); 0 when either side is constant (no ranking to compare)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.asarray(a, dtype=float)), rankdata(np.asarray(b, dtype=float))
    if len(ra) != len(rb) or len(ra) < 3:
        raise ValueError(f"a rank correlation needs two equally long lists of at least 3 values, got "
                         f"{len(ra)} and {len(rb)}.")
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def study_seed(data: ImageData, cfg: UPDPConfig, seed: int,
               make_model: Callable[[], PrunableModel] | None = None) -> dict:
    """One seed of the study: baseline, supernet, fitness of every subnet, the search, two fine-tunings each."""
    if not isinstance(cfg, UPDPConfig):
        raise TypeError(f"study_seed takes a UPDPConfig (e.g. UPDP_TINY), got {type(cfg).__name__}.")
    make_model = make_model or (lambda: ResCNN(cfg.cnn))
    torch.manual_seed(seed)
    baseline = make_model()
    n = baseline.num_blocks if isinstance(baseline, PrunableModel) else 0
    if not 0 < cfg.pruned_blocks <= n or math.comb(n, cfg.pruned_blocks) < 3:
        raise ValueError(f"pruning {cfg.pruned_blocks} of {n} blocks leaves fewer than 3 subnets to rank; "
                         "choose pruned_blocks and a model depth with C(depth, pruned_blocks) >= 3.")
    train_image_classifier(baseline, data, dataclasses.replace(cfg.baseline, seed=seed), desc="baseline")
    baseline.eval()
    supernet = copy.deepcopy(baseline)
    train_supernet(supernet, data, dataclasses.replace(cfg.supernet, seed=1000 + seed))
    masks = all_masks(baseline.num_blocks, cfg.pruned_blocks)
    score = subnet_fitness(copy.deepcopy(supernet), data, cfg.calib_batches)
    fitness = {m: score(m) for m in masks}
    search = genetic_search(fitness.__getitem__, baseline.num_blocks, cfg.pruned_blocks,
                            dataclasses.replace(cfg.search, seed=seed))
    tuned = {"progressive": [], "direct": []}
    subnet_cfg = dataclasses.replace(cfg.subnet, seed=2000 + seed)  # one data order for every fine-tuning
    for mask in tqdm(masks, desc=f"seed {seed}: fine-tune every subnet", leave=False, mininterval=10.0):
        for arm in tuned:
            subnet = copy.deepcopy(baseline)
            train_subnet(subnet, mask, data, subnet_cfg, progressive=arm == "progressive", ramp=cfg.ramp)
            tuned[arm].append(image_accuracy(subnet, data.x_test, data.y_test))
    return {"seed": seed, "baseline_test_acc": image_accuracy(baseline, data.x_test, data.y_test),
            "test_examples": len(data.y_test),
            "masks": [describe_mask(m) for m in masks], "fitness": [fitness[m] for m in masks], **tuned,
            "search": {"best": describe_mask(search.best), "evaluated": len(search.evaluated),
                       "fitness": search.best_fitness}}


def run_subnet_study(data: ImageData, cfg: SubnetStudyConfig,
                     make_model: Callable[[], PrunableModel] | None = None,
                     on_seed: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """:func:`study_seed` for every seed; ``on_seed(results so far)`` after each (e.g. to save progress)."""
    if not isinstance(cfg, SubnetStudyConfig):
        raise TypeError(f"run_subnet_study takes a SubnetStudyConfig(updp=..., seeds=...), got {type(cfg).__name__}.")
    done: list[dict] = []

    def one(seed: int) -> dict:
        done.append(study_seed(data, cfg.updp, seed, make_model))
        if on_seed is not None:
            on_seed(done)
        return done[-1]

    return run_seeds(one, list(range(cfg.first_seed, cfg.first_seed + cfg.seeds)))


def _rank_of(values: list[float], index: int) -> float:
    """1 = best; ties share their average rank."""
    from scipy.stats import rankdata

    return float(rankdata(-np.asarray(values, dtype=float))[index])


def summarise_subnet_study(seeds: list[dict]) -> dict:
    """Per-seed statistics and intervals over seeds (see the module docstring); plain numbers, JSON-ready."""
    if len(seeds) < 2:
        raise ValueError(f"the study has {len(seeds)} seed(s); an interval over seeds needs at least 2.")
    per_seed = []
    for run in seeds:
        f, prog, direct = run["fitness"], run["progressive"], run["direct"]
        pick = run["masks"].index(run["search"]["best"])
        per_seed.append({
            "seed": run["seed"],
            "spearman_progressive": spearman(f, prog), "spearman_direct": spearman(f, direct),
            "progressive_minus_direct": float(np.mean(prog) - np.mean(direct)),
            "pick_rank_fitness": _rank_of(f, pick), "pick_rank_finetuned": _rank_of(prog, pick),
            "pick_minus_mean": float(prog[pick] - np.mean(prog)), "best_minus_pick": float(max(prog) - prog[pick]),
            "pick_progressive_minus_direct": float(prog[pick] - direct[pick]),
            "searched": run["search"]["evaluated"], "candidates": len(run["masks"])})
    col = lambda key: [s[key] for s in per_seed]  # noqa: E731
    progs = [run["progressive"] for run in seeds]
    agreement = [spearman(a, b) for i, a in enumerate(progs) for b in progs[i + 1:]]
    summary = {"per_seed": per_seed, "seeds": len(seeds),
               "spearman_progressive": _interval(bootstrap_ci(col("spearman_progressive"))),
               "spearman_direct": _interval(bootstrap_ci(col("spearman_direct"))),
               "seed_to_seed_spearman": float(np.mean(agreement)),
               "progressive_minus_direct": _interval(paired_difference(
                   [float(np.mean(r["progressive"])) for r in seeds], [float(np.mean(r["direct"])) for r in seeds])),
               "pick_progressive_minus_direct": _interval(bootstrap_ci(col("pick_progressive_minus_direct"))),
               "pick_minus_mean": _interval(bootstrap_ci(col("pick_minus_mean"))),
               "pick_rank_finetuned": _interval(bootstrap_ci(col("pick_rank_finetuned"))),
               "searched_mean": float(np.mean(col("searched"))), "candidates": per_seed[0]["candidates"]}
    return summary


def _interval(iv: Interval) -> dict:
    return dataclasses.asdict(iv)


def interval(d: dict) -> Interval:
    """An :class:`~minillm.core.claims.Interval` back from its JSON form."""
    try:
        return Interval(**d)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{d!r} is not an interval record (estimate, low, high, n, method, level); read it from "
                         "summarise_subnet_study's output.") from err


def assert_fitness_predicts_finetuning(summary: dict) -> Interval:
    """Claim: across seeds, supernet fitness and fine-tuned accuracy rank the subnets alike (ρ interval > 0)."""
    return assert_claim(interval(summary["spearman_progressive"]),
                        "supernet fitness ranks the subnets as progressive fine-tuning does (Spearman > 0)", above=0.0)


def assert_search_pick_beats_average(summary: dict) -> Interval:
    """Claim: the searched subnet fine-tunes above the average subnet of its seed (interval of the gap > 0)."""
    return assert_claim(interval(summary["pick_minus_mean"]),
                        "the searched subnet fine-tunes better than the average subnet", above=0.0)


def assert_progressive_beats_direct(summary: dict) -> Interval:
    """Claim: averaged over every subnet, progressive fine-tuning ends above direct pruning (paired interval > 0)."""
    return assert_claim(interval(summary["progressive_minus_direct"]),
                        "progressive training beats direct pruning, averaged over every subnet", above=0.0)
