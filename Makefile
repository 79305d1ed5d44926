# Two entry points (see README): `make demo` runs the main job, `make test` runs the test suite.
# Both create the virtual environment on first use and re-install only when the pins change.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# One torch thread per process unless told otherwise (2-core machines thrash with more).
export OMP_NUM_THREADS ?= 2
export MKL_NUM_THREADS ?= 2
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast demo lint clean-venv

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Python 3.11 is required)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

demo: install
	$(BIN)/python -m demo

lint: install
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
