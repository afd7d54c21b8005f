"""Exercises are generated from solutions, stay in sync, and really fail until the learner writes code."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from notebook_utils import load_script

ROOT = Path(__file__).resolve().parents[2]
make_exercises = load_script("scripts/make_exercises.py")


def test_strip_solutions_keeps_indentation_and_counts_regions():
    src = "def f(x):\n    # BEGIN SOLUTION\n    return x + 1\n    # END SOLUTION\n\ny = 2\n"
    out, n = make_exercises.strip_solutions(src)
    assert n == 1
    assert out == ("def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError(\"Exercise: write this part, "
                   "then run the check cell below.\")\n\ny = 2")
    assert "return x + 1" not in out


@pytest.mark.parametrize("src, message", [
    ("# BEGIN SOLUTION\nx = 1\n", "never closed"),
    ("x = 1\n# END SOLUTION\n", "without a matching"),
])
def test_unbalanced_markers_are_errors(src, message):
    with pytest.raises(ValueError, match=message):
        make_exercises.strip_solutions(src)


def test_a_solution_without_exercises_is_an_error():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    with pytest.raises(ValueError, match="no '# BEGIN SOLUTION'"):
        make_exercises.make_exercise(json.loads(nbformat.writes(nb)))


def test_solution_only_cells_are_dropped_and_outputs_cleared():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("# BEGIN SOLUTION\nx = 1\n# END SOLUTION", outputs=[nbformat.v4.new_output("stream", text="hi")]),
        nbformat.v4.new_markdown_cell("the answer is 1", metadata={"tags": ["solution-only"]}),
    ])
    ex = make_exercises.make_exercise(json.loads(nbformat.writes(nb)))
    assert len(ex["cells"]) == 1 and ex["cells"][0]["outputs"] == []


def test_exercises_are_in_sync_with_solutions():
    expected = make_exercises.generate()
    assert expected, "no solutions notebooks found"
    for path, text in expected.items():
        assert path.exists(), f"{path.name} missing: run python scripts/make_exercises.py"
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run python scripts/make_exercises.py"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "exercises").glob("*.ipynb")))
def test_every_check_fails_on_the_untouched_exercise(name):
    """Run the learner copy as is: the check cell after each stub must fail.

    It fails with NotImplementedError from the stub it checks, or with NameError when it uses a name
    that an earlier, still unsolved exercise defines. (The solutions notebook, run under nbval,
    shows that the same checks pass once the code is written, so neither error hides a broken check.)
    """
    nb = nbformat.read(ROOT / "exercises" / name, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(ROOT / "exercises")}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    stubs = [i for i, c in enumerate(code) if "raise NotImplementedError" in c.source]
    assert stubs, f"{name} has no exercise stubs"
    for i in stubs:
        check = code[i + 1]
        errors = [o for o in check.outputs if o.output_type == "error"]
        assert errors and errors[0].ename in ("NotImplementedError", "NameError"), (
            f"{name}: the check after exercise cell {i} did not fail on the stub:\n{check.source[:200]}")
