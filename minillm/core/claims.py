r"""Claims with error bars: run an experiment over several seeds, put a 95 % interval on the result, and assert
the claim on the interval — never on one run.

For :math:`n` runs :math:`x_1..x_n` (one per seed), :func:`mean_ci` gives Student's interval
:math:`\bar x \pm t_{0.975,\,n-1}\, s/\sqrt n`. When two methods share seeds and data, their difference is
judged *paired*: :func:`paired_difference` resamples the seeds (or the test examples) with replacement and takes
the mean of :math:`a_i - b_i` each time (a percentile bootstrap), so the seed-to-seed variation both methods share
cancels. :func:`proportion_ci` is Wilson's interval for one accuracy on :math:`n` test examples.

A claim is a statement about the interval: "A beats B" means the whole interval of :math:`a - b` lies above 0.
:func:`assert_claim` raises :class:`ClaimError` when it does not, with the interval in the message, so a
reversed or null result fails a chapter instead of being glued into its prose. :func:`verdict` words what an
interval supports for the reader, and :func:`glue_interval` puts the numbers into a chapter's text.

Defined in the foundation; every chapter's headline claim is asserted with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch

T = TypeVar("T")


class ClaimError(AssertionError):
    """The interval does not support the claim (the message gives the interval and the bound)."""


@dataclass(frozen=True)
class Interval:
    """An estimate with a confidence interval: ``estimate`` in ``[low, high]`` at ``level``."""

    estimate: float
    low: float
    high: float
    n: int
    method: str
    level: float = 0.95

    def __post_init__(self):
        if not (math.isfinite(self.estimate) and math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"an interval needs finite numbers, got {self.estimate} [{self.low}, {self.high}]: "
                             "a run produced NaN or inf")
        if not self.low <= self.estimate <= self.high:
            raise ValueError(f"estimate {self.estimate} lies outside [{self.low}, {self.high}]")

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def excludes(self, value: float) -> bool:
        return value < self.low or value > self.high

    def format(self, fmt: str = ".3f", scale: float = 1.0, unit: str = "") -> str:
        """``'0.781 [0.770, 0.792]'`` (each number times ``scale``, followed by ``unit``)."""
        e, lo, hi = (format(v * scale, fmt) for v in (self.estimate, self.low, self.high))
        return f"{e}{unit} [{lo}{unit}, {hi}{unit}]"

    def __str__(self) -> str:
        return self.format(".3g")


def _as_array(values: Sequence[float] | torch.Tensor | np.ndarray, name: str = "values") -> np.ndarray:
    x = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError(f"{name} is empty: run the experiment for at least one seed")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf ({x.tolist()[:8]}): a run diverged; fix it before judging it")
    return x


def _t_quantile(level: float, df: int) -> float:
    from scipy.stats import t  # scipy comes with scikit-learn

    return float(t.ppf(0.5 + level / 2, df))


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t interval of independent runs (at least 2)."""
    x = _as_array(values)
    if x.size < 2:
        raise ValueError(f"an interval needs at least 2 runs, got {x.size}: add seeds")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    m, se = float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
    h = _t_quantile(level, x.size - 1) * se
    return Interval(m, m - h, m + h, int(x.size), "t", level)


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> Interval:
    """Mean and percentile-bootstrap interval (resampling ``values`` with replacement)."""
    x = _as_array(values)
    if x.size < 2:
        raise ValueError(f"a bootstrap needs at least 2 values, got {x.size}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    m = float(x.mean())
    return Interval(m, min(float(lo), m), max(float(hi), m), int(x.size), "bootstrap", level)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95, n_boot: int = 10_000,
                      seed: int = 0) -> Interval:
    """Mean of ``a - b`` over pairs that share a seed (or a test example), with a paired bootstrap interval.

    Raises:
        ValueError: when the two lists do not pair up (different lengths) or hold NaN/inf.
    """
    x, y = _as_array(a, "a"), _as_array(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired results need one value per shared seed in each: got {x.size} and {y.size}")
    out = bootstrap_ci(x - y, level, n_boot, seed)
    return Interval(out.estimate, out.low, out.high, out.n, "paired bootstrap", level)


def proportion_ci(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson's interval for a proportion (an accuracy of ``successes`` out of ``n`` test examples)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes} of {n}")
    from scipy.stats import norm

    z, p = float(norm.ppf(0.5 + level / 2)), successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, min(p, centre - half), max(p, centre + half), n, "wilson", level)


def run_seeds(experiment: Callable[[int], T], seeds: Sequence[int]) -> list[T]:
    """``[experiment(seed) for seed in seeds]`` — the one place a chapter loops over seeds."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"a claim needs at least 2 distinct seeds, got {list(seeds)}")
    return [experiment(seed) for seed in seeds]


def assert_claim(interval: Interval, claim: str, above: float | None = None, below: float | None = None) -> Interval:
    """Raise :class:`ClaimError` unless the whole interval lies above ``above`` and/or below ``below``.

    ``claim`` says in words what is asserted ("LoRA is within 2 points of full fine-tuning"); it goes into the
    message with the interval when the run does not support it.
    """
    if above is None and below is None:
        raise ValueError("assert_claim needs a bound: above=..., below=... or both")
    fails = (above is not None and interval.low <= above) or (below is not None and interval.high >= below)
    if fails:
        bound = " and ".join(s for s in (f"above {above}" if above is not None else "",
                                        f"below {below}" if below is not None else "") if s)
        raise ClaimError(f"the run does not support the claim '{claim}': its {interval.level:.0%} interval "
                         f"{interval.format('.4g')} ({interval.method}, n={interval.n}) does not lie {bound}")
    return interval


def verdict(interval: Interval, higher: str = "higher", lower: str = "lower", null: float = 0.0) -> str:
    """What an interval of a difference supports, in words: ``higher``, ``lower``, or that no difference is resolved."""
    if interval.low > null:
        return f"{higher} (the {interval.level:.0%} interval excludes {null:g})"
    if interval.high < null:
        return f"{lower} (the {interval.level:.0%} interval excludes {null:g})"
    return f"not resolved: the {interval.level:.0%} interval includes {null:g}, so this run cannot tell"


def glue_interval(name: str, interval: Interval, fmt: str = ".3f", scale: float = 1.0, unit: str = "") -> None:
    """Glue ``name`` (estimate and interval), ``name_est``, ``name_low`` and ``name_high`` into the book's prose."""
    from myst_nb import glue

    glue(name, interval.format(fmt, scale, unit), display=False)
    for part, value in (("est", interval.estimate), ("low", interval.low), ("high", interval.high)):
        glue(f"{name}_{part}", format(value * scale, fmt) + unit, display=False)
