# Two commands: `make demo` and `make test`. Each creates .venv if it is missing and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch/torchvision versions these machines install from local wheels; the package itself keeps lower bounds
CONSTRAINTS := requirements/constraints.txt
PYTEST_ARGS ?=

.PHONY: demo test venv benchmark docs figures clean

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
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet -d site
	WANDB_MODE=offline WANDB_SILENT=true $(PY) -m pytest $(PYTEST_ARGS)

benchmark: $(VENV)/.installed-test
	WANDB_MODE=offline WANDB_SILENT=true $(PY) benchmarks/overhead.py

# the documentation site, into site/ (a broken reference or a stale API name fails the build)
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

# the docs' figures, from a fresh run of the demo (about 3 minutes on a CPU)
figures: $(VENV)/.installed-test
	WANDB_MODE=offline WANDB_SILENT=true $(PY) docs/figures.py

clean:
	rm -rf $(VENV) runs site .pytest_cache
