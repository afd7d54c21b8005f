#!/usr/bin/env bash
# The GPU check (see scripts/gpu_check.py): the Triton benchmark, the other CUDA benchmarks, then every notebook with
# the full profile, shortest first, stopping cleanly at a deadline (default 12 minutes). Results and a summary land in
# benchmarks/results/ (gpu_check-full-cuda.json). Arguments pass through, e.g.  --deadline-min 30  or  --dry-run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
