# The two quick-start commands: `make reproduce` and `make test`.
# Each builds .venv itself. TORCH_VERSION picks the torch build installed first
# (2.13.0 is a CPU build on the development machines); TORCH_INDEX_URL can
# point pip at another wheel index (e.g. a CUDA one) on other machines.
PYTHON        ?= python3
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
VENV          ?= .venv
# hf: transformers, peft, safetensors for the integration tests (tests/integrations).
EXTRAS        ?= experiments,dev,hf
DATA_DIR      ?= $(if $(wildcard ../shared/data/mnist),../shared/data/mnist,)
# Optional contender/back end, installed without its declared torchvision dependency
# (it imports and runs without it); empty to skip.
FASTKRON      ?= pyfastkron==1.1.0
# Triton for the fused kernels' tests (run in its CPU interpreter here); empty to skip.
TRITON        ?= triton==3.9.0
ARGS          ?=

BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
PIP   := $(BIN)/python -m pip
DATA_ARG := $(if $(DATA_DIR),--data-dir $(DATA_DIR),)
LM_DATA_DIR ?= $(if $(wildcard ../shared/data/tinyshakespeare),../shared/data/tinyshakespeare,)
LM_DATA_ARG := $(if $(LM_DATA_DIR),--data-dir $(LM_DATA_DIR),)

.PHONY: venv test lint typecheck check check-wheel reproduce report results readme bench sweep compress lm lm-report lm-v2 lm-v2-report lm-compress lm-compress-report clean

venv: $(STAMP)

# torch is installed first and pinned through a constraints file so that no
# later install (an extra, pyfastkron) can swap it for another build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	echo "torch==$(TORCH_VERSION)" > $(VENV)/constraints.txt
	$(PIP) install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),) "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	$(if $(FASTKRON),$(PIP) install --quiet --no-deps -c $(VENV)/constraints.txt "$(FASTKRON)",)
	$(if $(TRITON),$(PIP) install --quiet -c $(VENV)/constraints.txt "$(TRITON)",)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/lint-imports
	$(BIN)/ruff format --check src tests benchmarks tools

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

# Build the wheel, install it in a fresh venv and run the README example (CI runs it).
check-wheel:
	bash tools/check_wheel.sh

# Trains the whole experiment from scratch into the untracked runs/mnist (the committed
# reference in results/mnist is left alone) and ends with its table, plots and a
# comparison with the reference; run again, it resumes where it stopped.
reproduce: $(STAMP)
	$(BIN)/torchkron reproduce --out runs/mnist --resume $(DATA_ARG) $(ARGS)

report: $(STAMP)
	$(BIN)/torchkron report results/mnist

# The maintainers' path: regenerate every committed table and plot in results/ from the
# committed run files (nothing is retrained), then the README and docs/.
results: $(STAMP)
	$(BIN)/torchkron report results/mnist
	$(BIN)/torchkron sweep --out results/sweep --report-only
	$(BIN)/torchkron compress --out results/compress --report-only
	$(MAKE) readme

# The generated blocks of README.md and docs/*.md, and benchmarks/results/headline.md
# (smoke `bench --quick` files left out); `tools/sync_readme.py --check` is the test.
readme: $(STAMP)
	$(BIN)/python tools/sync_readme.py

bench: $(STAMP)
	$(BIN)/torchkron bench $(ARGS)

sweep: $(STAMP)
	$(BIN)/torchkron sweep $(DATA_ARG) $(ARGS)

compress: $(STAMP)
	$(BIN)/torchkron compress --layers hidden --reuse-from results/sweep $(DATA_ARG) $(ARGS)

# The GPT study (docs/lm.md): lr sweeps, then every config x 3 seeds; resumable.
lm: $(STAMP)
	$(BIN)/torchkron lm sweep --out results/lm --resume --jobs 2 $(LM_DATA_ARG) $(ARGS)

lm-report: $(STAMP)
	$(BIN)/torchkron lm report results/lm

# The GPT study again (docs/lm.md, issue 18): structure-aware learning rates (dense
# parameters at the first study's dense rate), 3 seeds, equal-compute Kronecker; resumable.
lm-v2: $(STAMP)
	$(BIN)/torchkron lm sweep --study v2 --out results/lm-v2 --resume --jobs 2 --threads 1 $(LM_DATA_ARG) $(ARGS)

lm-v2-report: $(STAMP)
	$(BIN)/torchkron lm report results/lm-v2 --first-study results/lm

# Compressing the trained dense GPT (docs/lm-compress.md): students converted from the
# teacher, distilled, 3 seeds; resumable (finished runs are kept).
lm-compress: $(STAMP)
	$(BIN)/torchkron lm compress --out results/lm-compress --iters 300 --jobs 2 $(LM_DATA_ARG) $(ARGS)

lm-compress-report: $(STAMP)
	$(BIN)/torchkron lm compress-report results/lm-compress

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
