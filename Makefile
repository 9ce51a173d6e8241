# The two commands of the README:  make run  |  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup run test services browser bench clean mutate mutate-pinned

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
