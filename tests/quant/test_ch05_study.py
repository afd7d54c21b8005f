"""The SmolLM2 study regenerates at a small size (a random 2-layer Llama over bytes), and the chapter's gap-closing
claim is judged on its intervals; the committed result holds what the chapter reads from it."""

from __future__ import annotations

import json

import pytest

from minillm.core.bench import read_results, results_path
from minillm.core.claims import ClaimError
from minillm.quant import gap_claim, study_closures, study_ppl
from notebook_utils import ROOT, load_script

COMMITTED = results_path("ch05_smollm2", "tiny", "cpu", ROOT / "studies" / "results")


def test_study_regenerates_small(tmp_path, monkeypatch):
    monkeypatch.delenv("MINILLM_PROFILE", raising=False)
    monkeypatch.delenv("MINILLM_SMOKE", raising=False)
    script = load_script("studies/ch05_smollm2.py")
    path = script.main(["--quick", "--calib-windows", "4", "--eval-windows", "4", "--ctx", "64", "--seeds", "0", "1",
                        "--results-dir", str(tmp_path)])
    study = json.loads(path.read_text())
    assert study["complete"] and study["machine"]["device_type"] == "cpu"
    assert len(study["runs"]) == len(script.plan([0, 1]))
    for run in study["runs"]:
        assert len(run["window_nll"]) == 4 and run["ppl"] > 1 and run["quant_cpu_seconds"] >= 0
    assert set(study["q4_1"]) and all(0 <= v["integer_zero_exact"] <= 1 for v in study["q4_1"].values())
    for bits in (4, 3):
        assert len(study_ppl(study, "gptq", bits, -1, True)) == 2
        try:  # the pipeline runs end to end; on a random model RTN may even beat fp, so the claim may not apply
            gap_claim(study_closures(study, bits), bits)
        except (ClaimError, ValueError):
            pass


def test_committed_study_holds_what_the_chapter_reads():
    study = read_results(COMMITTED, "python studies/ch05_smollm2.py")
    assert study["settings"]["model"].startswith("SmolLM2-135M")
    fp, rtn4, rtn3 = study_ppl(study, "fp"), study_ppl(study, "rtn", 4), study_ppl(study, "rtn", 3)
    assert fp and rtn4 and rtn3 and fp[0] < rtn4[0] < rtn3[0]
    assert all(r["real_offset_exact"] > 0.99 and r["integer_zero_exact"] < 0.05 for r in study["q4_1"].values())
    for bits in (4, 3):
        closed = study_closures(study, bits)
        assert all(c > 0 for c in closed)


@pytest.mark.parametrize("closures", [[-0.3, -0.2, -0.25], [0.0, 0.02, -0.02]], ids=["reversed", "null"])
def test_gap_claim_trips_on_reversed_and_null_studies(closures):
    fp, rtn = 40.0, 65.0
    study = {"runs": [{"spec": {"method": "fp"}, "ppl": fp},
                      {"spec": {"method": "rtn", "bits": 4, "groupsize": -1}, "ppl": rtn}]
             + [{"spec": {"method": "gptq", "bits": 4, "groupsize": -1, "actorder": True, "seed": i},
                 "ppl": rtn - c * (rtn - fp)} for i, c in enumerate(closures)]}
    assert study_closures(study, 4) == pytest.approx(closures)
    with pytest.raises(ClaimError):
        gap_claim(study_closures(study, 4), 4)
