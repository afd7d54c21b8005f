"""The seeds study regenerates at a small size, and the chapter's claims are judged on its paired intervals."""

from __future__ import annotations

import json

import pytest

from minillm.accumulation import BATCH1_TUNED, COMPARISONS, SCHEMES, headline_claims, paired, scheme_differences
from minillm.core.bench import read_results, results_path
from minillm.core.claims import ClaimError
from notebook_utils import ROOT, load_script

COMMITTED = results_path("ch04_accumulation_seeds", "tiny", "cpu", ROOT / "studies" / "results")


def test_study_regenerates_small(tmp_path, monkeypatch):
    monkeypatch.delenv("MINILLM_PROFILE", raising=False)
    monkeypatch.delenv("MINILLM_SMOKE", raising=False)
    script = load_script("studies/ch04_accumulation_seeds.py")
    path = script.main(["--quick", "--seeds", "0", "1", "--tune-seeds", "1", "--base-grid", "1e-3", "3e-3",
                        "--lr-grid", "1e-3", "--max-extensions", "0", "--results-dir", str(tmp_path)])
    study = json.loads(path.read_text())
    assert study["complete"] and study["machine"]["device_type"] == "cpu"
    assert study["base_tuning"]["tuned_lr"] in (1e-3, 3e-3) and study["tuning"]["tuned_lr"] == 1e-3
    assert set(SCHEMES) | {BATCH1_TUNED} <= {r["scheme"] for r in study["runs"]}
    for run in study["runs"]:
        assert len(run["test_correct"]) == 16 and 0 <= run["test_accuracy"] <= 1
        assert run["cpu_seconds"] > 0 and run["loss_per_16"]
    assert len(scheme_differences(study)) == len(COMPARISONS)
    try:  # the pipeline runs end to end; at this size the claims may or may not hold
        headline_claims(study)
    except ClaimError:
        pass


def test_committed_study_supports_the_chapter():
    study = read_results(COMMITTED, "python studies/ch04_accumulation_seeds.py")
    assert study["complete"] and len(study["seeds"]) >= 5
    assert not study["tuning"]["edge"] and not study["base_tuning"]["edge"]  # no rate chosen at a grid's edge
    assert all(paired(study, a, b).n >= 5 for a, b in COMPARISONS)
    headline_claims(study)


def _study(per_scheme: dict[str, list[float]]) -> dict:
    return {"runs": [{"scheme": s, "seed": i, "test_accuracy": a} for s, accs in per_scheme.items()
                     for i, a in enumerate(accs)]}


def _committed_accuracies() -> dict[str, list[float]]:
    study = read_results(COMMITTED, "python studies/ch04_accumulation_seeds.py")
    names = {r["scheme"] for r in study["runs"]}
    return {n: [r["test_accuracy"] for r in sorted(study["runs"], key=lambda r: r["seed"]) if r["scheme"] == n]
            for n in names}


def _set(name, f):
    def apply(accs):
        accs[name] = f(accs)
    return apply


BROKEN = {  # each one reverses or nulls one headline claim
    "accumulation 16 far from batch 16": _set("batch 16", lambda a: [x + 0.05 for x in a["accumulation 16"]]),
    "batch 1 as good as accumulation 16": _set("batch 1", lambda a: list(a["accumulation 16"])),
    "batch 1 ahead of accumulation 16": _set("batch 1", lambda a: [x + 0.02 for x in a["accumulation 16"]]),
    "tuned batch 1 far ahead": _set(BATCH1_TUNED, lambda a: [x + 0.03 for x in a["accumulation 16"]]),
    "zero-first rule as good as accumulation": _set("accumulation 16, reference zero-first",
                                                   lambda a: list(a["accumulation 16"])),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_reversed_or_null_results_trip_the_headline(broken):
    accs = _committed_accuracies()
    headline_claims(_study(accs))  # the committed numbers pass ...
    BROKEN[broken](accs)
    with pytest.raises(ClaimError):  # ... and a reversed or null one does not
        headline_claims(_study(accs))
