# One entry point for developers and CI. Every target works on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml setup.py shards/_jpegturbo.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q -e '.[ray]' torch==2.13.0 \
		|| echo "warning: Ray could not install; the --ray tests will be skipped" >&2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/shardfeed demo --dir build/demo --images 2000 --classes 10

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]' torch==2.13.0
	$(BIN)/python -m pip install -q --no-deps 'litdata>=0.2.40' 'mosaicml-streaming>=0.13' 'transformers>=4.21.3,<5'
	$(BIN)/python -c 'import torch; v = torch.__version__; assert v.startswith("2.13.0"), v; print("torch", v)'
	test -d build/bench-src || $(BIN)/shardfeed sample build/bench-src --images 4000 --classes 10 --seed 0 --workers 2
	test -f build/bench-shards/manifest.json || $(BIN)/shardfeed shard build/bench-src build/bench-shards --num-shards 8 --workers 2
	$(BIN)/shardfeed bench --folder build/bench-src --shards build/bench-shards --workers 2 --repeat 3 --modes all

clean:
	rm -rf build $(VENV)
