# The README's two commands. Each sets itself up on a fresh clone: a virtual environment in .venv,
# the package and its dependencies, and the data it needs (the synthetic world is generated).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rc3-installed
# torch with a torchvision that matches it (timm needs torchvision); override for your CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

# Tests run in 2 worker processes (pytest-xdist) of one compute thread each, a whole file at a time (a
# module's fixtures are built once), the most expensive files first (both in tests/conftest.py). Measured
# on the whole suite, 2 cores: in a checkout that has run it before, 2 workers 1064 s and 3 workers 930 s
# (many tests wait on processes they started); on a fresh clone (`.ci/run`), where the quick reproduction
# builds its world first and is the longest path (388 s with 2 workers, 677 s sharing the cores with 3),
# 2 workers took 1118 s and 3 workers 1148 s. Override with `make test XDIST="-n 3 ..."` in a warm
# checkout, or XDIST= for one process.
XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: demo test test-fast lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[cpu,dev]'
	# DeepSpeed's just-in-time kernels (CPU all-reduce, CPU Adam) compiled now, not in the first run or test
	$(PY) -m rc3.tools.build_ops
	touch $(STAMP)

demo: $(STAMP)
	bash tools/demo.sh

# Everything, the multi-process DeepSpeed / end-to-end runs included.
test: $(STAMP)
	$(PY) -m pytest -q $(XDIST) --durations=25 tests

# The tests that take under a few seconds each (no `slow` marker): a couple of minutes.
test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow" tests

# ruff (pyflakes, pycodestyle, isort, bugbear, pyupgrade) on everything, mypy on rc3/ and the pretrain/ finetune/ scripts (pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf work runs
