# Two commands on a fresh machine:  `make book`  and  `make test`  (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: book test smoke venv browser data exercises bench clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

## Execute every chapter and build the website strictly into _build/html.
book: venv
	$(BIN)/jupyter-book build --all -W -n --keep-going .

## Unit tests, exercise sync, every notebook under nbval, the built site in headless Chromium, then the
## full-profile smoke run of every chapter (see `smoke`).
test: venv browser
	$(BIN)/python scripts/make_exercises.py --check
	$(BIN)/python scripts/clean_outputs.py --check
	$(BIN)/python scripts/notebook_pairs.py --check --report
	$(BIN)/python -m pytest $(NBVAL) tests book solutions
	$(MAKE) --no-print-directory smoke

## The full profile end to end on this CPU: full-size models and code paths, loops and data capped (MINILLM_SMOKE).
smoke: venv
	MINILLM_PROFILE=full MINILLM_SMOKE=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider book

## Headless Chromium for the end-to-end test (installed with apt when running as root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: install Chromium (e.g. 'sudo apt-get install chromium') to run the browser test"; fi; }

## Fetch the offline data into the cache (~/.cache/minillm or $$MINILLM_CACHE).
data: venv
	$(BIN)/python -c "from minillm.data.shakespeare import load_shakespeare; print(len(load_shakespeare()), 'characters')"

## Regenerate exercises/ from solutions/.
exercises: venv
	$(BIN)/python scripts/make_exercises.py

## Run the benchmarks on this machine's CPU (the GPU ones: scripts/gpu_check.sh).
bench: venv
	$(BIN)/python -m benchmarks --device cpu

clean:
	rm -rf _build .pytest_cache
