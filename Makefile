# Two entry points for a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-slow bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0   # pinned first: the CPU wheel on this disk, never a CUDA build
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m qwen35.ops.native || echo "native CPU kernels not built: the torch kernels run instead"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/qwen35 serve

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4   # one worker per core, at most 4 (pytest-xdist)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/bench_model.py

clean:
	rm -rf $(VENV) build src/*.egg-info
