# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

CHECKOV := build/tools/checkov/bin/checkov

.PHONY: install tools serve test lint protos check-protos bench clean test-container

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned first: the CPU wheel is on the machine, and an unpinned torch pulls GBs of CUDA
# packages. The package metadata keeps a range, which the pinned install already satisfies.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[server,convert,dev,bench]'
	touch $@

install: $(STAMP)

# checkov pins packaging<24 (pytest 9 needs >=24), so it gets its own venv under the ignored build/.
$(CHECKOV):
	$(PYTHON) -m venv build/tools/checkov
	build/tools/checkov/bin/pip install --quiet 'checkov>=3.2'

# The official OpenAI Node SDK, for the load generator's openai-node-client protocol and its test; without
# npm that test is skipped.
NODE_SDK := bench/node/node_modules/.package-lock.json

$(NODE_SDK): bench/node/package.json bench/node/package-lock.json
	command -v npm >/dev/null && npm ci --prefix bench/node --no-audit --no-fund --loglevel error \
		|| echo "the OpenAI Node SDK could not be installed: its tests will be skipped"

tools: $(CHECKOV) $(NODE_SDK)

# Serves all-MiniLM-L6-v2 (converted once into ~/.cache/millibatch on first use) on :50051.
serve: install
	$(BIN)/millibatch serve $(SERVE_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install tools lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Builds the cpu image with buildah (no Docker engine), runs it and calls Embed; several minutes.
test-container: install
	$(BIN)/hadolint Dockerfile
	deploy/container/build-and-test.sh

protos: install
	$(BIN)/python protos/generate.py

# Benchmarks against FastAPI+PyTorch, FastAPI+ONNX Runtime and Triton (docs/BENCHMARKS.md); about 13 min.
# `make bench BENCH_ARGS=--quick` is the 2-minute smoke run. Triton (nvidia-pytriton) gets its own
# environment because it pins protobuf < 7; where it cannot be installed the Triton peers are skipped.
BENCH_ARGS   ?=
TRITON_VENV  := build/bench-triton-venv

$(TRITON_VENV)/.stamp:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet nvidia-pytriton onnxruntime tokenizers uvloop \
		|| echo "nvidia-pytriton could not be installed: the Triton peers will be skipped"
	touch $@

# infinity-emb, a peer of bench.goodput (`--peers millibatch,infinity,infinity-onnx`), in its own environment
# (about 1.5 GB): the CPU torch pinned first, as in .venv, since infinity-emb's own range would pull a CUDA build.
# Its ONNX engine takes optimum 2 with optimum-onnx: its `optimum` extra resolves to optimum 1.x, whose exporter
# does not import with torch 2.13.
INFINITY_VENV := build/bench-infinity-venv

$(INFINITY_VENV)/.stamp:
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install --quiet torch==2.13.0
	$(INFINITY_VENV)/bin/pip install --quiet 'infinity-emb[server,torch]==0.0.78' optimum==2.1.0 \
		'optimum-onnx[onnxruntime]==0.1.0' torch==2.13.0 \
		|| echo "infinity-emb could not be installed: the infinity peer will be skipped"
	touch $@

bench: install $(TRITON_VENV)/.stamp
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
