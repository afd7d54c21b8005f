"""Tidy stored notebook outputs the way a terminal would show them.

Progress bars redraw themselves with carriage returns; a notebook stores every redraw as its own
stream output, which the rendered book shows as hundreds of lines. This merges the stream outputs of
a cell and keeps, on each line, only what follows the last carriage return — nbval's own
normalisation, applied before it compares outputs, so cleaned notebooks still pass nbval.

    python scripts/clean_outputs.py                  # every notebook in book/ and solutions/
    python scripts/clean_outputs.py --check          # exit 1 if a notebook needs cleaning
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat
from nbval.plugin import coalesce_streams

ROOT = Path(__file__).resolve().parent.parent


# tqdm.auto's complaint in a notebook without ipywidgets: environment noise, not course output
_TQDM_WARNING = re.compile(r"^.*TqdmWarning: IProgress not found.*\n(\s+from \.autonotebook import.*\n)?", re.M)


def clean_cell_outputs(outputs: list) -> list:
    """Merge each cell's streams and resolve carriage returns exactly as nbval does before comparing
    (``nbval.plugin.coalesce_streams``), so the stored text is what nbval compares against. A stream left
    empty (it held only the stripped warning) is dropped, so the book shows no empty output box."""
    outputs = [nbformat.from_dict(copy.deepcopy(dict(o))) for o in outputs]
    for out in outputs:
        if out.get("output_type") == "stream" and out["name"] == "stderr":
            out["text"] = _TQDM_WARNING.sub("", out["text"])
    return [o for o in coalesce_streams(outputs) if not (o.get("output_type") == "stream" and not o["text"])]


def clean_notebook(nb) -> bool:
    """Clean ``nb`` in place; return whether anything changed."""
    changed = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        original = [dict(o) for o in cell.outputs]
        cleaned = clean_cell_outputs(cell.outputs)
        if [dict(o) for o in cleaned] != original:
            cell.outputs = cleaned
            changed = True
    return changed


def notebooks() -> list[Path]:
    return sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    dirty = []
    for path in args.paths or notebooks():
        nb = nbformat.read(path, as_version=4)
        if clean_notebook(nb):
            dirty.append(path)
            if not args.check:
                nbformat.write(nb, path)
    for path in dirty:
        print(("needs cleaning: " if args.check else "cleaned: ") + str(path))
    if args.check and dirty:
        print("run `python scripts/clean_outputs.py`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
