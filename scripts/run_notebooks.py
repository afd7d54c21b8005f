"""Execute the course notebooks, store their outputs, and record how long each took.

    python scripts/run_notebooks.py                 # every notebook in book/ and solutions/, outputs saved
    python scripts/run_notebooks.py book/ch01_attention_gpt.ipynb
    python scripts/run_notebooks.py --no-save       # time them only
    python scripts/run_notebooks.py --no-times book/ch01_attention_gpt.ipynb   # save outputs, record no timing

Timings go to benchmarks/results/notebook_times-<profile>-<cpu|cuda>.json (merged with earlier runs,
keyed by notebook), and the README's table between the `timings` markers is regenerated from that file.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minillm.core.bench import results_path, write_results  # noqa: E402
from minillm.core.profile import current_profile  # noqa: E402
from minillm.core.runtime import pick_device  # noqa: E402
from scripts.clean_outputs import clean_notebook  # noqa: E402

START, END = "<!-- timings:start -->", "<!-- timings:end -->"


def execute(path: Path, save: bool) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    if save:
        clean_notebook(nb)
        nbformat.write(nb, path)
    return seconds


def timings_table(data: dict) -> str:
    rows = ["| notebook | minutes | device |", "|---|---|---|"]
    for name, seconds in sorted(data["notebooks"].items()):
        rows.append(f"| `{name}` | {seconds / 60:.1f} | {data['machine']['device_name']}, {data['machine']['torch_threads']} threads |")
    return "\n".join(rows)


def update_readme(data: dict, readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    profile = data["profile"]
    block = f"{START}\n_Measured by `scripts/run_notebooks.py` with the {profile} profile ({data['created']})._\n\n{timings_table(data)}\n{END}"
    readme.write_text(head + block + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--no-save", action="store_true", help="do not write outputs back")
    parser.add_argument("--no-times", action="store_true",
                        help="do not record the timings (JSON and README table): for runs on a busy machine")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
    device = pick_device()
    out = results_path("notebook_times", current_profile().name, device)
    previous = json.loads(out.read_text())["notebooks"] if out.exists() else {}
    for path in notebooks:
        path = path.resolve()
        name = str(path.relative_to(ROOT))
        seconds = execute(path, save=not args.no_save)
        previous[name] = round(seconds, 1)
        print(f"{name}: {seconds / 60:.1f} min", flush=True)
    if args.no_times:
        return 0
    write_results(out, {"profile": current_profile().name, "notebooks": previous}, device)
    update_readme(json.loads(out.read_text()))
    print(f"wrote {out.relative_to(ROOT)} and the README table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
