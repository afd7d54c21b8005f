"""Every exercise check rejects the plausible wrong answers a learner writes, not just the empty stub.

For each chapter, ``solutions/wrong_answers/<chapter>.py`` maps exercise numbers (the order of the solution's
exercise cells) to at least two wrong answers: each replaces the cell's ``# BEGIN SOLUTION`` region(s). The
solutions notebook runs top to bottom in one kernel; before each exercise cell runs for real, every wrong answer
is run in its place followed by the exercise's check cell, which must fail (an assertion, or a check's own error)
— while the wrong answer itself must run: a wrong answer that crashes on definition tests nothing.
"""

from __future__ import annotations

import copy
import importlib.util

import nbformat
import pytest
from nbclient import NotebookClient
from notebook_utils import ROOT, load_script

make_exercises = load_script("scripts/make_exercises.py")
CHAPTERS = sorted(p.stem for p in (ROOT / "solutions").glob("*.ipynb"))
NOT_A_REJECTION = {"NameError", "NotImplementedError", "SyntaxError", "IndentationError"}


def wrong_answers(chapter: str) -> dict[int, dict[str, str | tuple]]:
    path = ROOT / "solutions" / "wrong_answers" / f"{chapter}.py"
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: record at least two plausible wrong answers per exercise")
    spec = importlib.util.spec_from_file_location(f"wrong_{chapter}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WRONG_ANSWERS


def _error(cell) -> str | None:
    errors = [o for o in cell.outputs if o.output_type == "error"]
    return f"{errors[0].ename}: {errors[0].evalue}" if errors else None


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_exercise_records_two_wrong_answers(chapter):
    nb = nbformat.read(ROOT / "solutions" / f"{chapter}.ipynb", as_version=4)
    n = len(make_exercises.exercise_cells(nb))
    answers = wrong_answers(chapter)
    assert sorted(answers) == list(range(1, n + 1)), f"{chapter}: wrong answers for exercises {sorted(answers)}, has 1..{n}"
    for k, variants in answers.items():
        assert len(variants) >= 2, f"{chapter} exercise {k}: record at least two plausible wrong answers"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_checks_reject_every_recorded_wrong_answer(chapter):
    nb = nbformat.read(ROOT / "solutions" / f"{chapter}.ipynb", as_version=4)
    answers = wrong_answers(chapter)
    exercises = {idx: k + 1 for k, idx in enumerate(make_exercises.exercise_cells(nb))}
    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(ROOT / "solutions")}})
    problems = []
    with client.setup_kernel():
        for idx, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if idx in exercises:
                k = exercises[idx]
                check_idx = next(j for j in range(idx + 1, len(nb.cells)) if nb.cells[j].cell_type == "code")
                regions = sum(1 for line in cell.source.splitlines() if make_exercises.BEGIN.match(line))
                for name, code in answers.get(k, {}).items():
                    replacement = list(code) if isinstance(code, tuple) else [code] * regions
                    wrong = copy.deepcopy(cell)
                    wrong.source = make_exercises.replace_regions(cell.source, replacement, f"{chapter} ex {k}")
                    client.execute_cell(wrong, idx)
                    if (err := _error(wrong)) is not None:
                        problems.append(f"exercise {k}, wrong answer '{name}' does not run: {err}")
                        continue
                    check = copy.deepcopy(nb.cells[check_idx])
                    client.execute_cell(check, check_idx)
                    err = _error(check)
                    if err is None:
                        problems.append(f"exercise {k}: the check ACCEPTS the wrong answer '{name}'")
                    elif err.split(":")[0] in NOT_A_REJECTION:
                        problems.append(f"exercise {k}, wrong answer '{name}': the check failed with {err}, "
                                        "which is not a rejection of the answer")
            client.execute_cell(cell, idx)
            if (err := _error(cell)) is not None and "raises-exception" not in cell.metadata.get("tags", []):
                pytest.fail(f"{chapter}: cell {idx} of the solutions fails after the wrong answers ran: {err}")
    assert not problems, f"{chapter}:\n  " + "\n  ".join(problems)
