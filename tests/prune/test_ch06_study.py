"""The chapter 6 study regenerates at reduced size, and its claim functions work on what it writes.

The full study (every subnet fine-tuned, progressive and direct, over several seeds) takes about an hour of CPU;
``--quick`` runs a two-seed miniature of the same pipeline on a 4-block CNN. The claim functions are then fed
reversed and null numbers, which must trip them.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from minillm.core.claims import ClaimError
from minillm.prune import (assert_fitness_predicts_finetuning, assert_progressive_beats_direct,
                           assert_search_pick_beats_average, spearman, summarise_subnet_study)
from notebook_utils import ROOT


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """The script as a reader runs it, two seeds in two worker processes (the path the full study took)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MINILLM_PROFILE", "MINILLM_SMOKE")}
    out = tmp_path_factory.mktemp("study")
    subprocess.run([sys.executable, str(ROOT / "studies" / "ch06_subnet_ranking.py"), "--quick", "--workers", "2",
                    "--out", str(out)], check=True, cwd=ROOT, env={**env, "OMP_WAIT_POLICY": "PASSIVE"})
    (path,) = out.glob("ch06_subnet_ranking-*.json")
    return json.loads(path.read_text())


def test_quick_study_writes_every_subnet_of_every_seed(quick_study):
    assert quick_study["complete"] and quick_study["quick"] and quick_study["machine"]["device_type"] == "cpu"
    assert len(quick_study["seeds"]) == 2
    for run in quick_study["seeds"]:
        n = len(run["masks"])
        assert n == math.comb(4, 2) == len(set(run["masks"]))
        assert len(run["fitness"]) == len(run["progressive"]) == len(run["direct"]) == n
        assert all(0.0 <= v <= 1.0 for v in run["fitness"] + run["progressive"] + run["direct"])
        assert run["search"]["best"] in run["masks"] and 1 <= run["search"]["evaluated"] <= n
        assert run["fitness"][run["masks"].index(run["search"]["best"])] == run["search"]["fitness"]


def test_summary_is_recomputed_from_the_raw_numbers(quick_study):
    summary = summarise_subnet_study(quick_study["seeds"])
    assert summary == json.loads(json.dumps(quick_study["summary"]))  # what the JSON holds is what the code computes
    assert summary["seeds"] == 2 and summary["candidates"] == 6
    for key in ("spearman_progressive", "progressive_minus_direct", "pick_minus_mean", "pick_rank_finetuned"):
        assert summary[key]["low"] <= summary[key]["estimate"] <= summary[key]["high"]


def test_claim_functions_run_on_the_regenerated_study(quick_study):
    """On a 1-epoch miniature the claims may or may not hold; they must judge it, not crash."""
    for claim in (assert_fitness_predicts_finetuning, assert_search_pick_beats_average, assert_progressive_beats_direct):
        try:
            claim(quick_study["summary"])
        except ClaimError:
            pass


def _fake_seeds(shift: float, noise_sign: int = 1) -> list[dict]:
    """Eight seeds of 20 subnets whose fine-tuned accuracy follows the fitness ``noise_sign``-wise, progressive ahead by ``shift``."""
    import numpy as np
    rng = np.random.default_rng(0)
    masks = [f"m{i}" for i in range(20)]
    seeds = []
    for s in range(8):
        fitness = rng.uniform(0.5, 0.9, 20)
        tuned = 0.9 + noise_sign * 0.1 * (fitness - 0.7) + rng.normal(0, 0.002, 20)
        pick = masks[int(np.argmax(fitness))]
        seeds.append({"seed": s, "masks": masks, "fitness": fitness.tolist(), "progressive": (tuned + shift).tolist(),
                      "direct": tuned.tolist(), "search": {"best": pick, "evaluated": 12, "fitness": float(fitness.max())},
                      "baseline_test_acc": 0.95, "test_examples": 449})
    return seeds


def test_claims_hold_on_supporting_numbers():
    summary = summarise_subnet_study(_fake_seeds(0.01))
    assert_fitness_predicts_finetuning(summary)
    assert_search_pick_beats_average(summary)
    assert_progressive_beats_direct(summary)


def test_reversed_or_null_gain_trips_the_progressive_claim():
    with pytest.raises(ClaimError):
        assert_progressive_beats_direct(summarise_subnet_study(_fake_seeds(-0.01)))  # direct ahead
    with pytest.raises(ClaimError):
        assert_progressive_beats_direct(summarise_subnet_study(_fake_seeds(0.0)))  # no difference


def test_reversed_ranking_trips_the_claims():
    summary = summarise_subnet_study(_fake_seeds(0.01, noise_sign=-1))  # the best-fitness subnets fine-tune worst
    with pytest.raises(ClaimError):
        assert_fitness_predicts_finetuning(summary)
    with pytest.raises(ClaimError):
        assert_search_pick_beats_average(summary)


def test_null_ranking_trips_the_claims():
    summary = summarise_subnet_study(_fake_seeds(0.01, noise_sign=0))  # fine-tuned accuracy unrelated to fitness
    with pytest.raises(ClaimError):
        assert_fitness_predicts_finetuning(summary)


def test_spearman_averages_ties():
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)
    assert spearman([0.9, 0.95, 0.95, 0.97], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0  # a constant side has no ranking


def test_committed_study_is_complete_and_matches_its_raw_numbers():
    """The chapter reads this file: its summary must be what the code computes from its raw numbers."""
    path = ROOT / "studies" / "results" / "ch06_subnet_ranking-tiny-cpu.json"
    study = json.loads(path.read_text())
    assert study["complete"] and not study["quick"] and len(study["seeds"]) == study["config"]["seeds"] >= 2
    assert summarise_subnet_study(study["seeds"]) == json.loads(json.dumps(study["summary"]))
