# One-command setup + tests on a fresh machine (CPU). `make test` is what CI runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0
# DeepSpeed's just-in-time ops (on CPU its shared-memory collectives) are built into the venv, once, by setup:
# a build killed elsewhere leaves a lock in ~/.cache/torch_extensions on which every DeepSpeed start waits forever.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: setup test test-fast lint demo clean constraints

# constraints.txt pins every other dependency to the versions the README's figures were measured with
# (`make constraints` rewrites it from .venv); pyproject.toml keeps the floors for library users.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -c constraints.txt torch==$(TORCH_VERSION)
	# deepspeed builds no ops when torch is already present and isolation is off.
	$(PIP) install -c constraints.txt --no-build-isolation deepspeed==0.19.8
	$(PIP) install -c constraints.txt -e '.[dev]'
	$(PY) -m mta_moe.training.op_build
	touch $@

constraints: setup
	$(PIP) freeze --exclude-editable | grep -v -E '^(torch|pyflakes)==' > constraints.txt

setup: $(VENV)/.installed

test: setup lint
	DS_ACCELERATOR=cpu $(PY) -m pytest -q tests

# pycodestyle, pyflakes, import order and the formatting ([tool.ruff] in pyproject.toml; tests/ruff.toml: 160 columns)
lint: setup
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check

# the quick loop while developing: everything but the tests marked slow (whole runs, launchers, 2-rank runs)
test-fast: setup lint
	DS_ACCELERATOR=cpu $(PY) -m pytest -q -m "not slow" tests

# The main job: both stages on the bundled suite (CPU by default), the per-task table on the test split, and the
# report (stage 2 against stage 1: deltas, routing heatmaps, calibration, loss curves) in $(DEMO)/report, and one
# stock Hugging Face model per task folded from stage 1 in $(DEMO)/per_task (stage 2's gate network does not fold).
DEMO ?= runs/demo
# a free port per run, so two demos (or a demo beside a training job) on one machine do not collide
MASTER_PORT ?= $(shell python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
DS_LAUNCH ?= DS_ACCELERATOR=$${DS_ACCELERATOR:-cpu} $(VENV)/bin/deepspeed --num_gpus 1 --master_port $(MASTER_PORT)
demo: setup
	rm -rf $(DEMO)
	$(DS_LAUNCH) launchers/train.py --deepspeed ds_configs/stage1.json --train.output_dir $(DEMO)/stage1
	$(DS_LAUNCH) launchers/train.py --deepspeed ds_configs/stage2.json --train.output_dir $(DEMO)/stage2 \
		--train.init_from $(DEMO)/stage1/export
	$(PY) launchers/evaluate.py --model $(DEMO)/stage2/export --data $(DEMO)/stage2/data/suite/test.jsonl \
		--chance $(DEMO)/stage2/data/suite/suite.json --out $(DEMO)/test_scores.json
	$(PY) launchers/report.py --system stage1=$(DEMO)/stage1 --system stage2=$(DEMO)/stage2 --baseline stage1 \
		--test $(DEMO)/stage2/data/suite/test.jsonl --validation $(DEMO)/stage2/data/suite/validation.jsonl \
		--chance $(DEMO)/stage2/data/suite/suite.json --out $(DEMO)/report
	$(PY) -m mta_moe.cli export --model $(DEMO)/stage1/export --all --out $(DEMO)/per_task

clean:
	rm -rf $(VENV) build *.egg-info
