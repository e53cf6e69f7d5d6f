# One-command setup + tests on a fresh machine (CPU). `make test` is what CI runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0

.PHONY: setup test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install torch==$(TORCH_VERSION)
	# deepspeed builds no ops when torch is already present and isolation is off.
	$(PIP) install --no-build-isolation deepspeed==0.19.8
	$(PIP) install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

test: setup
	DS_ACCELERATOR=cpu $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) build *.egg-info
