"""The chapters are regression tests: nbval compares at least half of each chapter's output cells, and a cell whose
output nbval ignores (a training curve, an accuracy after training, a timing) asserts its result instead.

A compared output must be the same on every reader's CPU (counts, shapes, exact equalities, errors printed as
bounds); an ignored one is a float result of a long computation, so the cell itself must check it with a tolerance
or an interval that a broken implementation fails. Exceptions: the setup cell (it prints the reader's machine) and
cells whose only output is a figure.
"""

from __future__ import annotations

import re

import nbformat
import pytest
from notebook_utils import ROOT, load_script

pairs = load_script("scripts/notebook_pairs.py")
BOOK = sorted((ROOT / "book").glob("ch*.ipynb"))
ASSERTS = re.compile(r"\bassert\b|\bassert_\w+\(|\bcheck_\w+\(")


def _ignored_result_cells_without_assert(path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "nbval-ignore-output" not in cell.metadata.get("tags", []):
            continue
        if "chapter_setup(" in cell.source or ASSERTS.search(cell.source):
            continue
        texts = [o for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"  # not progress bars
                 or "text/plain" in o.get("data", {}) and "image/png" not in o.get("data", {})]
        if texts:
            found.append(f"cell {i} ({cell.source.strip().splitlines()[0][:60]!r})")
    return found


@pytest.mark.parametrize("path", BOOK, ids=lambda p: p.name)
def test_at_least_half_of_the_output_cells_are_compared(path):
    compared, total = pairs.compared_share(path)
    assert total and compared / total >= 0.5, (
        f"{path.name}: nbval compares {compared} of {total} output cells; print what is deterministic across machines "
        "(counts, shapes, bounds, rounded stable results) and untag those cells, or split a cell so its stable part "
        "is compared")


@pytest.mark.parametrize("path", BOOK, ids=lambda p: p.name)
def test_every_ignored_result_cell_asserts_its_result(path):
    missing = _ignored_result_cells_without_assert(path)
    assert not missing, (f"{path.name}: {missing} print a result nbval ignores but assert nothing; assert the result "
                         "with a tolerance or interval in the same cell (core.claims.assert_claim for seeded claims)")


def test_the_checks_catch_an_unchecked_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    setup = nbformat.v4.new_code_cell("ctx = chapter_setup('x')", metadata={"tags": ["nbval-ignore-output"]})
    setup.outputs = [nbformat.v4.new_output("stream", text="cpu\n")]
    unchecked = nbformat.v4.new_code_cell("print(loss)", metadata={"tags": ["nbval-ignore-output"]})
    unchecked.outputs = [nbformat.v4.new_output("stream", text="1.234\n")]
    nb.cells = [setup, unchecked]
    path = tmp_path / "ch00.ipynb"
    nbformat.write(nb, path)
    assert pairs.compared_share(path) == (0, 2)
    assert _ignored_result_cells_without_assert(path) == ["cell 1 ('print(loss)')"]
    unchecked.source += "\nassert loss < 2.0"
    nbformat.write(nb, path)
    assert _ignored_result_cells_without_assert(path) == []
