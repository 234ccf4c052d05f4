# minissl: the two commands of the quick start, and a few more.
#   make demo   pretrain SimCLR on the digits, probe it with few labels, print the table
#   make test   build the Cython kernels and run the test suite
# Both create their own virtual environment in .venv (override with VENV=...).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.minissl-installed

.PHONY: test test-reference test-all demo bench torch clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Editable install: compiles minissl/kernels/*/_cpu.pyx in place (falls back to NumPy if it cannot).
$(STAMP): $(PY) setup.py pyproject.toml $(wildcard minissl/kernels/*/_cpu.pyx minissl/kernels/*/*.h minissl/kernels/*.h minissl/kernels/*.pxd)
	$(PY) -m pip install -q -e ".[test,examples]"
	touch $(STAMP)

test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q

# The same suite on the pure-NumPy reference kernels.
test-reference: $(STAMP)
	OPENBLAS_NUM_THREADS=1 MINISSL_REFERENCE=1 $(PY) -m pytest -q

# Also the long end-to-end runs (quality bar of the methods).
test-all: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -m "slow or not slow"

# OpenBLAS reads its idle-thread timeout when NumPy loads, before minissl.runtime.tune() can
# set it (minissl/runtime.py): the training targets give it in the environment (yours wins).
BLAS_TIMEOUT := OPENBLAS_THREAD_TIMEOUT=$${OPENBLAS_THREAD_TIMEOUT:-12}

demo: $(STAMP)
	$(BLAS_TIMEOUT) $(PY) -m minissl demo

torch: $(STAMP)
	$(PY) -m pip install -q torch==2.13.0

# In the environment you give it: it measures what users get (each worker process inherits it).
bench: $(STAMP)
	$(PY) benchmarks/bench_cpu.py

clean:
	rm -rf build *.egg-info minissl/kernels/*/_cpu*.so minissl/kernels/*/_cpu.c $(VENV)
