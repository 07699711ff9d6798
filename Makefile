# The README's two commands are `make demo` and `make test`; both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
LINTED  = iotgw_common gateway device_agent tests $(wildcard bench/*.py)

.PHONY: demo test lint layers typecheck pytest system-deps bench clean ha-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# A real Home Assistant core for tests/mqtt/test_home_assistant.py, in a venv of its own (its pins
# conflict with ours). 2024.3.3 is the last release for Python 3.11. Home Assistant pip-installs
# the requirements of the integrations it sets up when it starts; they are installed here instead
# (the pins of each manifest.json: mqtt's; the always-loaded frontend, backup, hardware, file_upload,
# image_upload's; recorder's, which analytics imports; camera's, one of the entity platforms the
# MQTT integration sets up), and the test starts it with --skip-pip. josepy 2 broke the acme that
# hass-nabucasa pulls in unpinned, and http imports hass-nabucasa on every request: josepy<2.
HA_VENV    ?= .venv-ha
HA_STAMP    = $(HA_VENV)/.installed
HA_VERSION  = 2024.3.3
HA_REQS     = paho-mqtt==1.6.1 home-assistant-frontend==20240307.0 securetar==2024.2.1 \
              psutil-home-assistant==0.0.1 janus==1.0.0 Pillow==10.2.0 SQLAlchemy==2.0.27 \
              fnv-hash-fast==0.5.0 PyTurboJPEG==1.7.1 numpy==1.26.0 'josepy<2'

$(HA_STAMP): Makefile
	$(PYTHON) -m venv $(HA_VENV)
	$(HA_VENV)/bin/pip install --quiet --upgrade pip
	$(HA_VENV)/bin/pip install --quiet homeassistant==$(HA_VERSION)
	$(HA_VENV)/bin/pip install --quiet $(HA_REQS)
	touch $(HA_STAMP)

## ha-venv: Home Assistant core in .venv-ha, for the test against a real Home Assistant
ha-venv: $(HA_STAMP)

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

pytest: $(STAMP) $(HA_STAMP)
	$(BIN)/pytest

## bench: simulated devices against the real gateway, a bare websockets server and Mosquitto
## (about 6 minutes; BENCH_ARGS=--quick checks it all in under one; or name scenarios: BENCH_ARGS=ingest)
bench: $(STAMP)
	bash .ci/system-deps.sh
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(HA_VENV) demo-data .pytest_cache .mypy_cache .ruff_cache
