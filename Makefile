# The README's two commands are `make demo` and `make test`; both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
LINTED  = iotgw_common gateway device_agent tests $(wildcard bench/*.py)

.PHONY: demo test lint layers typecheck pytest system-deps bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## demo: gateway with the embedded SQLite store and three simulated Raspberry Pi agents
demo: $(STAMP)
	$(BIN)/iotgw demo

## test: system packages, lint, layering contracts, type check and the whole test suite against real servers
test: system-deps lint layers typecheck pytest

## system-deps: the Debian packages the tests use (apt; asks for sudo when not root)
system-deps:
	bash .ci/system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

## layers: the import contracts in pyproject.toml ([tool.importlinter]): the agent independent of the
## gateway, the codec without I/O, the gateway's layers, no import cycles
layers: $(STAMP)
	$(BIN)/lint-imports --no-cache --no-logo

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

## bench: simulated devices against the real gateway, a bare websockets server and Mosquitto
## (about 6 minutes; BENCH_ARGS=--quick checks it all in under one; or name scenarios: BENCH_ARGS=ingest)
bench: $(STAMP)
	bash .ci/system-deps.sh
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .ruff_cache
