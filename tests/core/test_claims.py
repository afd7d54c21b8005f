"""The claims helper: intervals that cover, paired comparisons, and asserts that trip on reversed or null results."""

import math

import numpy as np
import pytest

from minillm.core.claims import (ClaimError, Interval, assert_claim, bootstrap_ci, mean_ci, paired_difference,
                                 proportion_ci, run_seeds, verdict)


def test_mean_ci_matches_students_formula():
    x = [1.0, 2.0, 3.0, 4.0]
    ci = mean_ci(x)
    half = 3.182446305284263 * np.std(x, ddof=1) / 2  # t_{0.975, 3}
    assert ci.estimate == 2.5 and ci.low == pytest.approx(2.5 - half) and ci.high == pytest.approx(2.5 + half)
    assert ci.n == 4 and ci.method == "t" and "2.5" in str(ci)


def test_mean_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = sum(not mean_ci(rng.normal(1.0, 2.0, size=5)).excludes(1.0) for _ in range(2000))
    assert 0.93 < covered / 2000 < 0.97


def test_paired_difference_cancels_shared_seed_noise():
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 1.0, size=8)  # large, shared by both methods
    a, b = 0.7 + seed_effect + rng.normal(0, 0.01, 8), 0.6 + seed_effect + rng.normal(0, 0.01, 8)
    paired = paired_difference(a, b)
    assert paired.low > 0.05 and paired.high < 0.15  # resolved: 0.1 ± noise
    unpaired_overlap = mean_ci(a).low < mean_ci(b).high
    assert unpaired_overlap  # judged separately, the two intervals overlap and hide the effect


@pytest.mark.parametrize("a, b", [([0.60, 0.61, 0.62], [0.70, 0.71, 0.72]),   # reversed
                                  ([0.70, 0.72, 0.71], [0.71, 0.70, 0.72])])  # null
def test_a_claim_trips_on_a_reversed_or_null_result(a, b):
    with pytest.raises(ClaimError, match="does not support the claim 'A beats B'"):
        assert_claim(paired_difference(a, b), "A beats B", above=0.0)


def test_a_claim_passes_when_the_interval_clears_the_bound():
    ci = assert_claim(paired_difference([0.8, 0.82, 0.81, 0.83], [0.7, 0.71, 0.72, 0.70]), "A beats B", above=0.0)
    assert ci.low > 0
    with pytest.raises(ClaimError, match="below 0.05"):  # "within 5 points" is a two-sided claim
        assert_claim(ci, "A is within 5 points of B", above=-0.05, below=0.05)


def test_verdict_words_what_the_interval_supports():
    assert verdict(Interval(0.1, 0.05, 0.15, 5, "t")).startswith("higher")
    assert verdict(Interval(-0.1, -0.15, -0.05, 5, "t"), lower="worse").startswith("worse")
    assert "cannot tell" in verdict(Interval(0.01, -0.02, 0.04, 5, "t"))


def test_proportion_ci_is_wilsons_interval():
    ci = proportion_ci(78, 100)
    assert ci.low == pytest.approx(0.6893, abs=1e-4) and ci.high == pytest.approx(0.8500, abs=1e-4)
    assert proportion_ci(0, 10).low == 0.0 and proportion_ci(10, 10).high == 1.0


def test_bootstrap_is_seeded_and_brackets_the_mean():
    x = [0.1, 0.5, 0.3, 0.9, 0.2]
    assert bootstrap_ci(x) == bootstrap_ci(x) and bootstrap_ci(x).low < np.mean(x) < bootstrap_ci(x).high


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="at least 2 runs"):
        mean_ci([1.0])
    with pytest.raises(ValueError, match="NaN or inf"):
        mean_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="one value per shared seed"):
        paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2 distinct seeds"):
        run_seeds(lambda s: s, [0, 0])
    with pytest.raises(ValueError, match="needs a bound"):
        assert_claim(Interval(0.0, -1.0, 1.0, 3, "t"), "nothing")
    with pytest.raises(ValueError, match="successes"):
        proportion_ci(11, 10)
    assert run_seeds(lambda s: s * 2, [1, 2, 3]) == [2, 4, 6]
