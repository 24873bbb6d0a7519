# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# torch is pinned and installed first (the CPU wheel on a CPU machine); on a GPU machine run
# `make install TORCH_VERSION=<your CUDA build version>` or `pip install -e .` after installing torch.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test test-slow bench clean

install:
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e ".[test]"

demo: install
	$(PYTHON) -m pgolf run --preset cpu-demo

test: install
	$(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow

bench: install
	$(PYTHON) benchmarks/throughput.py

clean:
	rm -rf runs data/tiny .pytest_cache
