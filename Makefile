# Two commands: `make demo` and `make test`. Each creates .venv if it is missing and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision versions these machines install from local wheels; the package itself keeps lower bounds
CONSTRAINTS := requirements/constraints.txt
PYTEST_ARGS ?=

.PHONY: demo test venv benchmark clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.installed-%: pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP) install -e ".[$*]" -c $(CONSTRAINTS)
	touch $@

venv: $(VENV)/.installed-test

demo: $(VENV)/.installed-test
	WANDB_MODE=offline WANDB_SILENT=true $(PY) examples/quickstart.py $(DEMO_ARGS)

test: $(VENV)/.installed-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	WANDB_MODE=offline WANDB_SILENT=true $(PY) -m pytest $(PYTEST_ARGS)

benchmark: $(VENV)/.installed-test
	WANDB_MODE=offline WANDB_SILENT=true $(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
