"""Where the course's files live: the checkout's root, its benchmark results and its mlflow store.

Nothing here depends on how the package was installed: the root is found by walking up from the working
directory (notebooks run in ``book/``, scripts at the top) to the ``pyproject.toml`` of the course, and
every location can be overridden by an environment variable.

Defined in the foundation.
"""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_ENV = "MINILLM_RESULTS"


def project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) holding the course's
    ``pyproject.toml``; None outside a checkout."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.exists() and 'name = "minillm"' in pyproject.read_text(encoding="utf-8", errors="replace"):
            return folder
    return None


def results_dir() -> Path:
    """``$MINILLM_RESULTS``, else ``<checkout>/benchmarks/results``.

    Raises:
        FileNotFoundError: outside a checkout with the variable unset (the message names the fix).
    """
    if env := os.environ.get(RESULTS_ENV):
        return Path(env)
    root = project_root()
    if root is None:
        raise FileNotFoundError(
            f"benchmark results live in <checkout>/benchmarks/results, and {Path.cwd()} is not inside a checkout "
            f"of the course; run from the checkout or set {RESULTS_ENV} to the results folder.")
    return root / "benchmarks" / "results"
