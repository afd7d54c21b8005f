"""Every notebook has a jupytext text twin that is in sync with it; the check names the fix when it is not."""

import shutil

import jupytext
import pytest
from notebook_utils import ROOT, load_script

pairs = load_script("scripts/notebook_pairs.py")


@pytest.mark.parametrize("path", pairs.paired_notebooks(), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_and_text_twin_are_in_sync(path):
    assert pairs.pair_problem(path) is None, pairs.pair_problem(path)


def test_a_stale_twin_is_caught(tmp_path, monkeypatch):
    (tmp_path / "book").mkdir()
    (tmp_path / "solutions").mkdir()
    src = ROOT / "book" / "ch01_attention_gpt.ipynb"
    shutil.copy(src, tmp_path / "book" / src.name)
    shutil.copy(src.with_suffix(".py"), tmp_path / "book" / src.with_suffix(".py").name)
    monkeypatch.setattr(pairs, "ROOT", tmp_path)
    assert pairs.pair_problem(tmp_path / "book" / src.name) is None
    twin = tmp_path / "book" / src.with_suffix(".py").name
    nb = jupytext.read(twin)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.source += "\nprint('edited in the text file only')"
    jupytext.write(nb, twin, fmt="py:percent")
    problem = pairs.pair_problem(tmp_path / "book" / src.name)
    assert problem and "jupytext --update --to ipynb" in problem
    twin.unlink()
    assert "missing" in pairs.pair_problem(tmp_path / "book" / src.name)
