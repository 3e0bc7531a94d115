# raftkv — every set-up step lives here, so a fresh machine needs only `make cluster-up` / `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SEEDS  ?= 5000
N      ?= 5

.PHONY: venv proto test lint soak sim clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

# The generated stubs are committed; this regenerates them (tests/unit/test_proto_drift.py
# fails when proto/ and raftkv/rpc/ disagree).
proto: venv
	$(PY) -m grpc_tools.protoc -Iraftkv/rpc=proto --python_out=. --pyi_out=. --grpc_python_out=. proto/raftkv.proto

test: venv
	$(PY) -m pytest

lint: venv
	$(PY) -m ruff check raftkv client tests
	$(PY) -m ruff format --check raftkv client tests
	$(PY) -m mypy raftkv client tests

# Many more seeded clusters than `make test` runs; prints one line per failing seed.
soak: venv
	$(PY) -m tests.simulation --seeds $(SEEDS) --jobs 2

sim: venv
	$(PY) -m tests.simulation --seeds 100

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
