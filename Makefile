# coinvision: `make demo` runs the whole loop, `make test` runs the test suite. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= ../shared/data
# pip must take PyPI's torch 2.13.0 + torchvision 0.28.0 pair: a machine-local CPU-only torch wheel
# (pip.conf find-links) does not match PyPI's torchvision and `import timm` then fails.
PIP := PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: install test lint demo bench release-models clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[all,dev]"
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

demo: install
	$(BIN)/python examples/demo.py

bench: install
	$(BIN)/python -m benchmarks.run_all --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
