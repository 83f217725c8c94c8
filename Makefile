# The two commands of a fresh checkout: `make run` and `make test` (see README.md).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: run test lint bench-query bench-writes

# The container's boot (backend/boot.py): flask db upgrade, flask users ensure-admin, then
# gunicorn with backend/gunicorn_conf.py, here on this host's loopback only.
run: $(VENV)/.installed
	exec $(BIN)/python -m backend.boot --bind 127.0.0.1:$(PORT)

# The tests on every core (TEST_WORKERS=0: one process); tests/conftest.py says how they share.
TEST_WORKERS ?= auto
test: $(VENV)/.installed-test
	$(BIN)/pytest --numprocesses $(TEST_WORKERS) --dist loadgroup

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The query and export benchmark (docs/benchmarks.md): ROWS=10000000 make bench-query.
ROWS ?= 1000000
bench-query: $(VENV)/.installed
	$(BIN)/python -m bench.query --rows $(ROWS)

# The write ceiling (docs/benchmarks.md): durable appends/s with 1, 2, 4 and 8 writer processes.
bench-writes: $(VENV)/.installed
	$(BIN)/python -m bench.write_ceiling

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-test $(VENV)/.installed
