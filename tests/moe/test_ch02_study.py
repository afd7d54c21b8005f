"""Chapter 2's studies regenerate in miniature, and their claim functions reject reversed or null results."""

from __future__ import annotations

import copy
import json

import pytest

from minillm.core.claims import ClaimError
from minillm.moe.claims import (assert_balancing_evens_load, assert_moe_beats_dense, busiest_share, final_val,
                                paired, tag_interval)
from notebook_utils import load_script


@pytest.fixture(scope="module")
def vs_dense(tmp_path_factory):
    study = load_script("studies/ch02_moe_vs_dense.py")
    path = study.main(["--quick", "--out", str(tmp_path_factory.mktemp("vs_dense"))])
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def routing(tmp_path_factory):
    study = load_script("studies/ch02_routing_init.py")
    path = study.main(["--quick", "--parts", "routing", "--out", str(tmp_path_factory.mktemp("routing"))])
    return json.loads(path.read_text())


def test_vs_dense_study_records_paired_runs_with_curves(vs_dense):
    runs = vs_dense["runs"]
    assert vs_dense["complete"] and vs_dense["machine"]
    assert {(r["tag"], r["seed"]) for r in runs} == {(m, s) for m in ("moe", "dense-active", "dense-total")
                                                     for s in (0, 1)}
    for r in runs:
        curve = r["curve"]
        assert len(curve["tokens"]) == len(curve["val_subset"]) == len(curve["wall_s"]) == 2
        assert curve["wall_s"] == sorted(curve["wall_s"]) and r["val_loss"] > 0
    assert tag_interval(runs, "moe").n == 2
    paired(runs, "dense-active", "moe")  # the pipeline computes the headline interval


def test_routing_study_records_the_busiest_expert(routing):
    runs = routing["runs"]
    assert {r["tag"] for r in runs} == {"noisy-bal", "plain-bal", "noisy-nobal", "plain-nobal"}
    assert all(busiest_share(r) >= 1.0 for r in runs)  # the busiest expert takes at least the uniform share


def _fake(tag_values: dict[str, list[float]], key: str = "val_loss") -> list[dict]:
    runs = []
    for tag, values in tag_values.items():
        for seed, v in enumerate(values):
            run = {"tag": tag, "seed": seed, "train": {"learning_rate": 1e-3}}
            if key == "val_loss":
                run["val_loss"] = v
            else:
                run["routing"] = {"max_load_ratio": v}
            runs.append(run)
    return runs


def test_moe_claim_passes_a_clear_win_and_trips_on_reversed_and_null_results():
    win = _fake({"moe": [1.80, 1.81, 1.79], "dense-active": [1.85, 1.86, 1.84]})
    assert assert_moe_beats_dense(win).low > 0
    reversed_ = _fake({"moe": [1.85, 1.86, 1.84], "dense-active": [1.80, 1.81, 1.79]})
    null = _fake({"moe": [1.80, 1.82, 1.81], "dense-active": [1.81, 1.80, 1.82]})
    for runs in (reversed_, null):
        with pytest.raises(ClaimError):
            assert_moe_beats_dense(runs)


def test_balancing_claim_trips_on_reversed_and_null_results():
    win = _fake({"noisy-nobal": [3.1, 2.8, 3.4], "noisy-bal": [1.3, 1.2, 1.4]}, key="routing")
    assert assert_balancing_evens_load(win).low > 0
    for values in ({"noisy-nobal": [1.3, 1.2, 1.4], "noisy-bal": [3.1, 2.8, 3.4]},
                   {"noisy-nobal": [1.3, 1.5, 1.2], "noisy-bal": [1.4, 1.3, 1.3]}):
        with pytest.raises(ClaimError):
            assert_balancing_evens_load(_fake(values, key="routing"))


def test_claim_helpers_reject_runs_they_cannot_judge():
    runs = _fake({"moe": [1.8, 1.9]})
    with pytest.raises(ValueError, match="no run is tagged 'dense'"):
        tag_interval(runs, "dense")
    one_seed = _fake({"moe": [1.8], "dense-active": [1.9]})
    with pytest.raises(ValueError, match="share 1 seed"):
        paired(one_seed, "dense-active", "moe")
    with pytest.raises(ValueError, match="no routing record"):
        busiest_share(copy.deepcopy(runs[0]))
    assert final_val({"val_loss": None, "curve": {"val_subset": [2.5, 2.1]}}) == 2.1


def test_vs_dense_merge_adds_the_runs_of_other_seeds(tmp_path):
    study = load_script("studies/ch02_moe_vs_dense.py")
    meta = {"models": {"moe": {}}, "schedule": {"max_iters": 3}, "complete": True}
    main, other = study.results_file("cpu", tmp_path), tmp_path / "seed1.json"
    main.write_text(json.dumps({**meta, "seeds": [0], "runs": [{"tag": "moe", "seed": 0}]}))
    other.write_text(json.dumps({**meta, "seeds": [1], "runs": [{"tag": "moe", "seed": 1}, {"tag": "moe", "seed": 0}]}))
    merged = json.loads(study.main(["--out", str(tmp_path), "--merge", str(other)]).read_text())
    assert merged["seeds"] == [0, 1] and len(merged["runs"]) == 2 and merged["machine"]
    other.write_text(json.dumps({**meta, "schedule": {"max_iters": 4}, "runs": []}))
    with pytest.raises(ValueError, match="another schedule"):
        study.main(["--out", str(tmp_path), "--merge", str(other)])
