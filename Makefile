# Two entry points for a fresh machine (README.md): `make run` and `make test`.
# Both create .venv on first use: the CPU torch wheel, then this package with its extras.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel these machines carry; GPU images already have their own torch.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# `python -m` puts the working directory first on sys.path, where the top-level kernels/ folder
# would shadow Hugging Face's `kernels` package (transformers imports it); children inherit this.
SAFE_PATH := PYTHONSAFEPATH=1

.PHONY: run test test-fast lint proto

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev,operator]'
	touch $@

run: $(VENV)/.installed
	$(SAFE_PATH) $(VENV)/bin/epochctl demo

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) scripts/typecheck.py
	$(SAFE_PATH) $(PY) -m pytest -q $(PYTEST_ARGS)

# The inner loop, not a set-up command: unit and kernel tests without the ones that start processes
# (the marker is in tests/conftest.py), well under a minute on 2 cores. `make test` runs everything.
test-fast: $(VENV)/.installed
	$(SAFE_PATH) $(PY) -m pytest -q -m "not processes" tests/unit tests/kernels $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) scripts/typecheck.py

proto: $(VENV)/.installed
	$(PY) scripts/gen_proto.py
