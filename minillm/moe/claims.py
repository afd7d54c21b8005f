r"""The chapter's claims, judged on intervals over seeds: MoE against dense, balancing, noise, initialisation.

Every study run is a record of :func:`minillm.moe.experiment.measured_run` with a ``tag`` (the model or variant)
and a ``seed``. Runs of two tags that share a seed saw the same batches, so a difference is judged *paired*
(:func:`minillm.core.claims.paired_difference`): the mean of :math:`a_s - b_s` over the shared seeds :math:`s`,
with a bootstrap interval over seeds. With three seeds such an interval is coarse — it can only tell effects
that are large against the seed-to-seed spread — and the chapter words its conclusions accordingly
(:func:`minillm.core.claims.verdict`).

The headline assertions raise :class:`~minillm.core.claims.ClaimError` when a run does not support them:

* :func:`assert_moe_beats_dense` — the MoE's validation loss is lower than a dense baseline's;
* :func:`assert_balancing_evens_load` — the balancing loss lowers the busiest expert's share.

Defined in chapter 2.
"""

from __future__ import annotations

from typing import Callable, Sequence

from minillm.core.claims import Interval, assert_claim, mean_ci, paired_difference

Metric = Callable[[dict], float]


def final_val(run: dict) -> float:
    """The whole-split validation loss, or the last curve point when a run has no full evaluation."""
    if run.get("val_loss") is not None:
        return float(run["val_loss"])
    return float(run["curve"]["val_subset"][-1])


def busiest_share(run: dict) -> float:
    """The busiest expert's share × E on the probe batch at the end of training (worst layer)."""
    if not run.get("routing"):
        raise ValueError(f"run {run.get('tag')!r} (seed {run.get('seed')}) has no routing record: it is not a MoE; "
                         "pass the MoE variants' runs")
    return float(run["routing"]["max_load_ratio"])


def _check_runs(runs: Sequence[dict]) -> None:
    if not isinstance(runs, (list, tuple)) or not runs or not all(isinstance(r, dict) and "tag" in r and "seed" in r
                                                                     for r in runs):
        raise ValueError("runs must be a non-empty list of study records with 'tag' and 'seed' "
                         "(the 'runs' list of a ch02 study JSON)")


def by_seed(runs: Sequence[dict], tag: str, metric: Metric = final_val) -> dict[int, float]:
    """``{seed: metric(run)}`` for the runs tagged ``tag``."""
    _check_runs(runs)
    out = {int(r["seed"]): metric(r) for r in runs if r["tag"] == tag}
    if not out:
        raise ValueError(f"no run is tagged {tag!r}; the tags are {sorted({r['tag'] for r in runs})}")
    return out


def tag_interval(runs: Sequence[dict], tag: str, metric: Metric = final_val) -> Interval:
    """Mean and Student interval of ``metric`` over the seeds of ``tag``."""
    return mean_ci(list(by_seed(runs, tag, metric).values()))


def paired(runs: Sequence[dict], a: str, b: str, metric: Metric = final_val) -> Interval:
    """``metric(a) - metric(b)`` over the seeds both tags ran, with a paired bootstrap interval."""
    xa, xb = by_seed(runs, a, metric), by_seed(runs, b, metric)
    seeds = sorted(set(xa) & set(xb))
    if len(seeds) < 2:
        raise ValueError(f"{a!r} and {b!r} share {len(seeds)} seed(s) ({seeds}); a paired interval needs at least 2: "
                         "run both on the same seeds")
    return paired_difference([xa[s] for s in seeds], [xb[s] for s in seeds])


def assert_moe_beats_dense(runs: Sequence[dict], dense: str = "dense-active", moe: str = "moe") -> Interval:
    """Assert that the MoE's validation loss is below the dense baseline's: (dense - MoE) interval above 0."""
    return assert_claim(paired(runs, dense, moe), f"the MoE ({moe}) has a lower validation loss than {dense}",
                        above=0.0)


def assert_balancing_evens_load(runs: Sequence[dict], without: str = "noisy-nobal",
                                with_: str = "noisy-bal") -> Interval:
    """Assert that the balancing loss lowers the busiest expert's share: (without - with) interval above 0."""
    return assert_claim(paired(runs, without, with_, busiest_share),
                        f"the balancing loss lowers the busiest expert's share ({without} vs {with_})", above=0.0)


def best_learning_rate(runs: Sequence[dict], tag: str) -> tuple[float, float]:
    """(learning rate, validation loss) of the best run of ``tag`` among the rates it was trained at."""
    rows = [(float(r["train"]["learning_rate"]), final_val(r)) for r in runs if r["tag"] == tag]
    if not rows:
        raise ValueError(f"no run is tagged {tag!r}; the tags are {sorted({r['tag'] for r in runs})}")
    return min(rows, key=lambda row: row[1])
