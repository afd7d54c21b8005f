"""Keep every notebook and its reviewed text twin (jupytext ``py:percent``) in sync, and report what nbval compares.

Each notebook in ``book/`` and ``solutions/`` is paired with a ``.py`` file of the same name: the text file is
the source a reviewer reads and edits; the ``.ipynb`` keeps the outputs nbval compares and the book shows.

    python scripts/notebook_pairs.py --check     # exit 1 if a pair differs in any cell's type, source or tags
    python scripts/notebook_pairs.py --report    # share of output cells nbval compares, per notebook

After editing ``book/x.py``: ``jupytext --update --to ipynb book/x.py`` (inputs replaced, outputs kept), then
re-execute the notebook (``python scripts/run_notebooks.py book/x.ipynb``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
IGNORED_TAGS = {"nbval-ignore-output", "nbval-skip"}


def paired_notebooks(root: Path = ROOT) -> list[Path]:
    return sorted((root / "book").glob("*.ipynb")) + sorted((root / "solutions").glob("*.ipynb"))


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(sorted(c.metadata.get("tags", [])))) for c in nb.cells]


def pair_problem(ipynb: Path) -> str | None:
    """Why ``ipynb`` and its ``.py`` twin disagree, or None when they are in sync."""
    text = ipynb.with_suffix(".py")
    if not text.exists():
        return f"{text.relative_to(ROOT)} is missing: run `jupytext --set-formats ipynb,py:percent {ipynb.relative_to(ROOT)}`"
    nb, twin = jupytext.read(ipynb), jupytext.read(text)
    if nb.metadata.get("jupytext", {}).get("formats") != "ipynb,py:percent":
        return f"{ipynb.relative_to(ROOT)} is not paired: run `jupytext --set-formats ipynb,py:percent {ipynb.relative_to(ROOT)}`"
    a, b = _cells(nb), _cells(twin)
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return (f"cell {i} of {ipynb.relative_to(ROOT)} differs from {text.relative_to(ROOT)} "
                    f"({'type' if x[0] != y[0] else 'tags' if x[2] != y[2] else 'source'}): after editing the text file run "
                    f"`jupytext --update --to ipynb {text.relative_to(ROOT)}` and re-execute the notebook")
    if len(a) != len(b):
        return f"{ipynb.relative_to(ROOT)} has {len(a)} cells, {text.relative_to(ROOT)} {len(b)}: sync them with jupytext"
    return None


def compared_share(ipynb: Path) -> tuple[int, int]:
    """(compared, total) code cells with stored outputs; a cell is compared unless tagged ignore/skip."""
    nb = nbformat.read(ipynb, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and c.outputs]
    compared = [c for c in cells if not IGNORED_TAGS & set(c.metadata.get("tags", []))]
    return len(compared), len(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if a notebook and its text twin differ")
    parser.add_argument("--report", action="store_true", help="print the share of output cells nbval compares")
    args = parser.parse_args(argv)
    status = 0
    if args.check or not args.report:
        problems = [p for p in map(pair_problem, paired_notebooks()) if p]
        for problem in problems:
            print(problem)
        if problems:
            status = 1
        else:
            print(f"{len(paired_notebooks())} notebooks in sync with their text twins")
    if args.report:
        for path in paired_notebooks():
            compared, total = compared_share(path)
            print(f"{str(path.relative_to(ROOT)):42s} {compared:3d} of {total:3d} output cells compared "
                  f"({compared / max(total, 1):.0%})")
    return status


if __name__ == "__main__":
    sys.exit(main())
