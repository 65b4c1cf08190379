# `make demo` and `make test` each create .venv and install into it (torch pinned, CPU build).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU wheel of torch lies in /opt/wheels on this kind of machine; name it explicitly so the
# pin never resolves to a CUDA build from the index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
PIP := $(BIN)/pip install -q $(FIND_LINKS) -c constraints.txt

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,bench]"
	touch $@

demo: $(STAMP)
	$(BIN)/sepconv demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_depthwise.py

clean:
	rm -rf $(VENV) build src/*.egg-info
