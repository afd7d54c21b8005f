#!/usr/bin/env bash
# GPU checks: benchmarks and every notebook with the full profile, on CUDA. Run from the repository root
# on a machine with an NVIDIA GPU; results land in benchmarks/results/*-full-cuda.json.
set -euo pipefail
cd "$(dirname "$0")/.."
make venv
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to PyTorch: run this on a GPU machine')"
export MINILLM_PROFILE=full MINILLM_DEVICE=cuda
.venv/bin/python -c "import torch; print('GPU:', torch.cuda.get_device_name(0))"
# One benchmark list for make bench and this check: benchmarks/__init__.py (ordered by value).
.venv/bin/python -m benchmarks --device cuda
.venv/bin/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg book solutions
.venv/bin/python scripts/run_notebooks.py --no-save
