r"""Chapter 4's claims, judged on paired intervals over seeds.

A study (``studies/ch04_accumulation_seeds.py``) runs every scheme on the same seeds; seed :math:`s` fixes the
split, the new head, the order of the examples and the dropout masks for every scheme alike. The difference of
two schemes :math:`a, b` is judged *paired*, on :math:`d_s = \mathrm{acc}_a(s) - \mathrm{acc}_b(s)`:
:func:`minillm.core.claims.paired_difference` gives the mean of :math:`d_s` with a bootstrap interval over the
seeds, so what the seeds share (an easy split, a lucky head) cancels. A claim is what the interval supports:

* "a beats b" — the whole interval of :math:`d` lies above 0;
* "a matches b within δ" — the whole interval lies inside :math:`(-δ, δ)`.

:func:`scheme_differences` computes the intervals a chapter reports, :func:`headline_claims` asserts the ones
the chapter's text states, and raises :class:`minillm.core.claims.ClaimError` when a run does not support them.

Defined in chapter 4 (gradient accumulation).
"""

from __future__ import annotations

from typing import Mapping

from minillm.core.claims import Interval, assert_claim, paired_difference

BATCH1_TUNED = "batch 1, tuned lr"

#: (a, b) pairs the chapter reports: what accumulation buys, what tuning batch 1 changes, and what the
#: reference scripts' stepping rules cost.
COMPARISONS = (
    ("accumulation 16", "batch 1"),
    ("accumulation 16", BATCH1_TUNED),
    (BATCH1_TUNED, "batch 1"),
    ("accumulation 16", "batch 16"),
    ("accumulation 16, reference rule", "accumulation 16"),
    ("accumulation 16, reference zero-first", "accumulation 16"),
)

#: accumulation must reproduce the batch it imitates, and match a batch of 1 tuned for its rate, within this margin
MATCH_TOLERANCE = 0.01


def _runs(study: Mapping) -> list[dict]:
    runs = study.get("runs") if isinstance(study, Mapping) else None
    if not isinstance(runs, list):
        raise ValueError("a study is the JSON that studies/ch04_accumulation_seeds.py writes (a dict with 'runs'); "
                         "read it with minillm.core.bench.read_results")
    return runs


def accuracies(study: Mapping, scheme: str, split: str = "test") -> dict[int, float]:
    """``{seed: accuracy}`` of one scheme in a study's results.

    Raises:
        ValueError: when the study has no run of ``scheme`` (the message lists the schemes it has).
    """
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', got {split!r}")
    runs = _runs(study)
    found = {r["seed"]: r[f"{split}_accuracy"] for r in runs if r.get("scheme") == scheme}
    if not found:
        raise ValueError(f"the study has no run of {scheme!r}; it has {sorted({r.get('scheme') for r in runs})}")
    return found


def paired(study: Mapping, a: str, b: str) -> Interval:
    """Mean test-accuracy difference ``a - b`` over the seeds both ran, with a paired bootstrap interval."""
    acc_a, acc_b = accuracies(study, a), accuracies(study, b)
    seeds = sorted(set(acc_a) & set(acc_b))
    if len(seeds) < 2:
        raise ValueError(f"{a!r} and {b!r} share {len(seeds)} seed(s); a paired interval needs at least 2 — "
                         "run the study on more seeds")
    return paired_difference([acc_a[s] for s in seeds], [acc_b[s] for s in seeds])


def scheme_differences(study: Mapping) -> dict[tuple[str, str], Interval]:
    """The paired interval of every comparison in :data:`COMPARISONS` that the study holds."""
    schemes = {r.get("scheme") for r in _runs(study)}
    return {(a, b): paired(study, a, b) for a, b in COMPARISONS if a in schemes and b in schemes}


def headline_claims(study: Mapping) -> dict[str, Interval]:
    """Assert the chapter's headline claims on the study; return their intervals.

    1. accumulation 16 matches batch 16 within :data:`MATCH_TOLERANCE` (it computes the same updates);
    2. accumulation 16 beats batch 1 at the batch of 16's learning rate;
    3. accumulation 16 matches batch 1 at a rate tuned for it within :data:`MATCH_TOLERANCE` — so the loss of
       claim 2 is a mistuned rate, not the batch size;
    4. the reference scripts' zero-first rule (every update from one example) is worse than accumulation 16.

    Raises:
        ClaimError: when an interval does not support its claim (the message gives the interval).
    """
    tol = MATCH_TOLERANCE
    return {
        "accumulation 16 - batch 16": assert_claim(paired(study, "accumulation 16", "batch 16"),
                                                   f"accumulation 16 matches batch 16 within {tol:.0%}",
                                                   above=-tol, below=tol),
        "accumulation 16 - batch 1": assert_claim(paired(study, "accumulation 16", "batch 1"),
                                                  "accumulation 16 beats batch 1 at the batch of 16's rate", above=0.0),
        f"accumulation 16 - {BATCH1_TUNED}": assert_claim(
            paired(study, "accumulation 16", BATCH1_TUNED),
            f"accumulation 16 matches batch 1 at its tuned rate within {tol:.0%}", above=-tol, below=tol),
        "zero-first rule - accumulation 16": assert_claim(
            paired(study, "accumulation 16, reference zero-first", "accumulation 16"),
            "the zero-first reference rule is worse than accumulation 16", below=0.0),
    }
