# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/local.yaml

.PHONY: run test test-cluster test-container install install-dev lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# pip (not uv/poetry) so a local CPU build of torch satisfying torch>=2.13,<2.14 is found first
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/pipeline run -c $(CONFIG) $(RUN_ARGS)

test: install-dev
	$(BIN)/python -m pytest -q -m "not cluster"

# two Ray nodes on loopback with S3 on moto: minutes, so apart from `make test` (CI runs both)
test-cluster: install-dev
	$(BIN)/python -m pytest -q -m cluster

# Builds cluster/Dockerfile with podman (installed if missing, as root) on a local Debian base and
# runs a stage inside the image: its cache key must equal the one computed here.
test-container: install-dev
	PYTHON=$(BIN)/python bash tests/container/run.sh

lint: install-dev
	$(BIN)/ruff check pipeline tests benchmarks

bench: install-dev
	$(BIN)/python benchmarks/featurize.py
	$(BIN)/python benchmarks/train_ingest.py
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/python benchmarks/smoke.py
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/end_to_end.py --rows 1M,10M --repeats 2
	$(BIN)/python benchmarks/scaling.py

clean:
	rm -rf .artifacts data
