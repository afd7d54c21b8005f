"""Run the course's benchmarks for one device: ``python -m benchmarks --device cpu`` (``make bench``).

Each script runs in its own process with ``MINILLM_DEVICE`` set; its wall time is printed when it ends.
``--only NAME ...`` runs a subset; ``--list`` prints the list.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import for_device

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names to run (default: all for the device)")
    parser.add_argument("--list", action="store_true", help="print the benchmarks for the device and exit")
    args = parser.parse_args(argv)
    chosen = [b for b in for_device(args.device) if args.only is None or b.name in args.only]
    if args.only:
        unknown = set(args.only) - {b.name for b in for_device(args.device)}
        if unknown:
            parser.error(f"no benchmark {sorted(unknown)} for device {args.device}; see --list")
    if args.list:
        for b in chosen:
            print(f"{b.name:26s} chapter {b.chapter}  {b.measures}")
        return 0
    env = {**os.environ, "MINILLM_DEVICE": args.device}
    for b in chosen:
        start = time.perf_counter()
        print(f"== benchmarks/{b.name}.py ({args.device})", flush=True)
        result = subprocess.run([sys.executable, str(HERE / f"{b.name}.py")], env=env)
        print(f"   {b.name}: exit {result.returncode} after {time.perf_counter() - start:.0f} s", flush=True)
        if result.returncode != 0:
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
