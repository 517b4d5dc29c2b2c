# The README's two commands. Each sets itself up on a fresh clone: a virtual environment in .venv,
# the package and its dependencies, and the data it needs (the synthetic world is generated).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rc3-installed
# torch with a torchvision that matches it (timm needs torchvision); override for your CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[cpu,dev]'
	touch $(STAMP)

demo: $(STAMP)
	bash tools/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf work runs
