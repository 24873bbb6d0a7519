# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the suite).
# Both create and use a project virtual environment (.venv): plain `pip install` into the system Python is
# refused on current Debian/Ubuntu. torch is pinned and installed first (the CPU wheel on a CPU machine); on a
# GPU machine run `make install TORCH_VERSION=<your CUDA build version>` or install your CUDA torch into .venv
# first and then `.venv/bin/pip install -e .`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test test-slow bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"

demo: install
	$(PY) -m pgolf run --preset cpu-demo

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) benchmarks/throughput.py

clean:
	rm -rf runs data/tiny .pytest_cache
