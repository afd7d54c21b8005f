"""Generate the learner copies in exercises/ from the worked notebooks in solutions/.

In a solution's code cells, the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` are the answer;
the learner copy replaces them with a ``NotImplementedError`` at the same indentation. Cells tagged
``solution-only`` (e.g. a discussion of the answer) are dropped, and all outputs are cleared. The check
cells stay, so a learner runs the same assertions the solution passes.

    python scripts/make_exercises.py          # regenerate exercises/
    python scripts/make_exercises.py --check  # exit 1 if exercises/ is out of date (CI runs this)
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
STUB = '{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError("Exercise: write this part, then run the check cell below.")\n'


def strip_solutions(source: str, where: str = "cell") -> tuple[str, int]:
    """Replace every marked region of ``source`` by a stub; return the new source and the region count."""
    out, inside, count = [], False, 0
    for line in source.splitlines(keepends=True):
        if not inside and (m := BEGIN.match(line)):
            inside, count = True, count + 1
            out.append(STUB.format(indent=m.group("indent")))
        elif inside and END.match(line):
            inside = False
        elif not inside:
            if END.match(line):
                raise ValueError(f"{where}: '# END SOLUTION' without a matching '# BEGIN SOLUTION'")
            out.append(line)
    if inside:
        raise ValueError(f"{where}: '# BEGIN SOLUTION' is never closed by '# END SOLUTION'")
    return "".join(out).rstrip("\n"), count


def replace_regions(source: str, replacements: list[str | None], where: str = "cell") -> str:
    """``source`` with its k-th marked region replaced by ``replacements[k]`` (re-indented to the region's
    indentation; None keeps the solution). Used to feed a check the plausible wrong answers a learner writes."""
    out, inside, k = [], False, -1
    for line in source.splitlines(keepends=True):
        if not inside and (m := BEGIN.match(line)):
            inside, k = True, k + 1
            if k >= len(replacements):
                raise ValueError(f"{where}: region {k + 1} has no replacement (got {len(replacements)})")
            if replacements[k] is not None:
                body = textwrap.dedent(replacements[k]).strip("\n")
                out.append(textwrap.indent(body, m.group("indent"), lambda _: True) + "\n")
        elif inside and END.match(line):
            inside = False
        elif not inside or replacements[k] is None:
            if not (inside and BEGIN.match(line)):
                out.append(line)
    if inside:
        raise ValueError(f"{where}: '# BEGIN SOLUTION' is never closed by '# END SOLUTION'")
    if k + 1 != len(replacements):
        raise ValueError(f"{where}: {len(replacements)} replacements for {k + 1} regions")
    return "".join(out)


def exercise_cells(nb: dict) -> list[int]:
    """Indices (into ``nb["cells"]``) of the code cells holding a solution region: exercise 1, 2, ..."""
    return [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            and any(BEGIN.match(line) for line in "".join(c["source"]).splitlines())]


def make_exercise(solution: dict, name: str = "notebook") -> dict:
    """The learner copy of one solution notebook (nbformat 4 JSON as a dict)."""
    nb = copy.deepcopy(solution)
    nb.get("metadata", {}).pop("jupytext", None)  # the learner copy is not paired with a text file
    cells, regions = [], 0
    for i, cell in enumerate(nb["cells"]):
        if "solution-only" in cell.get("metadata", {}).get("tags", []):
            continue
        if cell["cell_type"] == "code":
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            new_source, n = strip_solutions(source, f"{name} cell {i}")
            regions += n
            cell["source"] = new_source
            cell["outputs"] = []
            cell["execution_count"] = None
            cell.get("metadata", {}).pop("execution", None)
        cells.append(cell)
    if regions == 0:
        raise ValueError(f"{name} has no '# BEGIN SOLUTION' region: nothing for a learner to do")
    nb["cells"] = cells
    return nb


def render(nb: dict) -> str:
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def generate(root: Path = ROOT) -> dict[Path, str]:
    """Map each exercises/ path to the text it should have."""
    out = {}
    for path in sorted((root / "solutions").glob("*.ipynb")):
        solution = json.loads(path.read_text(encoding="utf-8"))
        out[root / "exercises" / path.name] = render(make_exercise(solution, path.name))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if exercises/ is out of date")
    args = parser.parse_args(argv)
    expected = generate()
    stale = [p for p, text in expected.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    orphans = [p for p in (ROOT / "exercises").glob("*.ipynb") if p not in expected]
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(ROOT)}")
        for p in orphans:
            print(f"no solution for: {p.relative_to(ROOT)}")
        if stale or orphans:
            print("run `python scripts/make_exercises.py` and commit exercises/")
            return 1
        print(f"exercises/ is in sync with solutions/ ({len(expected)} notebooks)")
        return 0
    for p in orphans:
        p.unlink()
    for p, text in expected.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    print(f"wrote {len(expected)} exercise notebooks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
