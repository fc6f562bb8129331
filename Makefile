# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= configs/local.yaml

.PHONY: run test test-cluster test-container install install-dev lint bench bench-smoke bench-table clean

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

# Every benchmark, full size (the 10M-row ones take many minutes each; the end-to-end one an
# hour on 2 cores), then the table in docs/benchmarks.md from their JSON results.
BENCHMARKS := smoke train_ingest featurize audit_cost user_aggregation telemetry_overhead ingest end_to_end scaling

bench: install-dev
	for name in $(BENCHMARKS); do $(BIN)/python benchmarks/$$name.py || exit 1; done
	$(BIN)/python benchmarks/featurize.py --scaling
	$(BIN)/python benchmarks/table.py

# Every benchmark at a tiny size through the same code (minutes in all; CI runs it): a change
# that breaks one fails here. The numbers go to temporary folders, never to benchmarks/results.
bench-smoke: install-dev
	for name in $(BENCHMARKS); do $(BIN)/python benchmarks/$$name.py --smoke || exit 1; done
	$(BIN)/python benchmarks/featurize.py --scaling --smoke
	$(BIN)/python benchmarks/table.py --check

bench-table: install-dev
	$(BIN)/python benchmarks/table.py

clean:
	rm -rf .artifacts data
