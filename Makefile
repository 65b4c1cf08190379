# `make demo` and `make test` each create .venv and install into it (torch pinned, CPU build),
# building the native kernels once for every instruction set (about 13 minutes on 2 cores, Zen 3).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU wheel of torch lies in /opt/wheels on this kind of machine; name it explicitly so the
# pin never resolves to a CUDA build from the index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(BIN)/pip install -q $(FIND_LINKS) -c constraints.txt
KERNEL_SOURCES := $(wildcard src/sepconv/kernels/*.cpp src/sepconv/kernels/*.h)

.PHONY: install build demo test bench clean

install: $(STAMP)

# torch first, then the package built against it without build isolation (an isolated build
# would fetch its own torch: a CUDA build of several GB).
$(STAMP): pyproject.toml setup.py constraints.txt $(KERNEL_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0 "setuptools>=77" wheel ninja
	$(PIP) --no-build-isolation -e ".[test]"
	touch $@

# Rebuild the extension in place after editing the C++ kernels (incremental).
build: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

demo: $(STAMP)
	$(BIN)/sepconv demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_depthwise.py

clean:
	rm -rf $(VENV) build src/*.egg-info src/sepconv/*.so
