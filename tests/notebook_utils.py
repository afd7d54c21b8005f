"""Helpers for tests: run the notebook cells that re-derive package classes; import repository scripts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_cells(notebook: str | Path, tag: str | None = None) -> list[str]:
    """Sources of the notebook's code cells (only those carrying ``tag`` when given)."""
    nb = json.loads((ROOT / notebook).read_text(encoding="utf-8"))
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        if tag is not None and tag not in cell.get("metadata", {}).get("tags", []):
            continue
        source = cell["source"]
        out.append("".join(source) if isinstance(source, list) else source)
    return out


PRELUDE = "import math\nimport torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"


def exec_tagged_cells(notebook: str | Path, tag: str = "package-twin", prelude: str = PRELUDE) -> dict:
    """Execute the cells tagged ``tag`` (class and function definitions) and return their namespace.

    Chapters tag each cell that re-derives a package class inline with ``package-twin``; tests then
    hold the notebook's version equal to the package's on seeded inputs. ``prelude`` supplies the
    imports a chapter makes in its first cell (math, torch, nn, F by default).
    """
    sources = code_cells(notebook, tag)
    if not sources:
        raise AssertionError(f"{notebook} has no cell tagged {tag!r}")
    namespace: dict = {}
    exec(prelude, namespace)
    for source in sources:
        exec(compile(source, f"{notebook}[{tag}]", "exec"), namespace)
    return namespace


def load_script(relpath: str):
    """Import a repository script (``benchmarks/x.py``, ``scripts/y.py``) as a module, by path."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
