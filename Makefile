# The two commands of the README:  make run  |  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup run test services browser bench bench-gpu gpu-wheels clean mutate mutate-pinned

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, pinned: an unpinned torch would pull several GB of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[workers,dev]'
	touch $@

setup: $(VENV)/.installed

## Embedded mode: SQLite + local artifacts + in-process Celery worker, demo model. No servers.
run: setup
	$(BIN)/lethe serve --embedded --demo

## Whole test suite against the local PostgreSQL and Redis (started if not running).
test: setup services browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

services:
	bash .ci/services.sh

browser:
	bash .ci/browser.sh

bench: setup services
	$(BIN)/python bench/api_intake.py
	$(BIN)/python bench/forgetting.py
	$(BIN)/python bench/pipeline.py

## On a CUDA machine with its own python3 + PyTorch (no servers): the CUDA tests and the library part
## of bench/realistic.py, everything under $(OUT) (bench/gpu.sh; --cpu-dry-run elsewhere).
OUT ?= bench/results/gpu
bench-gpu:
	OUT="$(OUT)" bash bench/gpu.sh

## What such a machine may lack (pydantic, for the library), as wheels for its Python 3.12 x86-64,
## into .whl/: carry that folder with the working tree and bench/gpu.sh installs from it offline.
gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 \
	  safetensors==0.8.0 scikit-learn==1.9.1 scipy==1.17.1 joblib==1.6.0 threadpoolctl==3.8.0 \
	  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 hypothesis==6.170.17 sortedcontainers==2.4.0 attrs==26.1.0

## Mutation testing (not in CI; hours on two cores): mutmut over the state machines and the math,
## configured in pyproject.toml [tool.mutmut]. Survivors are listed by `mutmut results`.
mutate: setup services
	$(BIN)/pip install -q -e '.[mutation]'
	$(BIN)/mutmut run $(MUTATE_ARGS)
	$(BIN)/mutmut results

## The one-line bugs of issue 11, each applied alone against the test that pins it (minutes).
mutate-pinned: setup services
	$(BIN)/python tests/mutation/pinned_mutants.py

clean:
	rm -rf $(VENV) var test-artifacts .pytest_cache mutants
