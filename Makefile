# The two quick-start commands: `make reproduce` and `make test`.
# Each builds .venv itself. TORCH_VERSION picks the torch build installed first
# (2.13.0 is a CPU build on the development machines); TORCH_INDEX_URL can
# point pip at another wheel index (e.g. a CUDA one) on other machines.
PYTHON        ?= python3
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=
VENV          ?= .venv
# hf: transformers, peft, safetensors for the integration tests (tests/integrations);
# lycoris: lycoris-lora for the LyCORIS LoKr integration and its tests.
EXTRAS        ?= experiments,dev,hf,lycoris
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
FASHION_DATA_DIR ?= $(if $(wildcard ../shared/data/fashion-mnist),../shared/data/fashion-mnist,)
FASHION_DATA_ARG := $(if $(FASHION_DATA_DIR),--data-dir $(FASHION_DATA_DIR),)
# The adapters study reads mnist/ and fashion-mnist/ from one folder.
ADAPT_DATA_DIR ?= $(if $(wildcard ../shared/data/fashion-mnist),../shared/data,)
ADAPT_DATA_ARG := $(if $(ADAPT_DATA_DIR),--data-dir $(ADAPT_DATA_DIR),)
# Where the two controls of docs/reproduction.md train (untracked unless named results/...).
PERMUTED_OUT  ?= runs/mnist-permuted
FASHION_OUT   ?= runs/fashion-mnist

.PHONY: venv test lint typecheck check check-wheel reproduce report results readme bench sweep \
	compress-settings \
	compress lm lm-report lm-v2 lm-v2-report lm-compress lm-compress-report adapters \
	adapters-report clean \
	reproduce-permuted reproduce-fashion report-permuted report-fashion filters

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

# Where the MNIST advantage comes from (docs/reproduction.md): the same variants and
# baselines x 3 seeds on MNIST with its pixels permuted, and on Fashion-MNIST; resumable.
reproduce-permuted: $(STAMP)
	$(BIN)/torchkron reproduce --out $(PERMUTED_OUT) --resume --permute-pixels 0 --jobs 2 --no-compare $(DATA_ARG) $(ARGS)

reproduce-fashion: $(STAMP)
	$(BIN)/torchkron reproduce --out $(FASHION_OUT) --resume --dataset fashion-mnist --jobs 2 --no-compare $(FASHION_DATA_ARG) $(ARGS)

# Their committed reports, from the run files alone (set against results/mnist), and
# each folder's filters.png from its filters.npz.
report-permuted: $(STAMP)
	$(BIN)/torchkron report results/mnist-permuted --baseline results/mnist

report-fashion: $(STAMP)
	$(BIN)/torchkron report results/fashion-mnist --baseline results/mnist

# Rewrites the committed filters.npz files from saved models (models/ is untracked): trains
# seed 0 of original, one-kron-mat and two-kron-mat on plain MNIST into runs/mnist-filters
# (the runs of results/mnist, retrained: same numbers), and needs the models of the two
# controls' seed-0 runs where they were trained (FILTERS_PERMUTED, FILTERS_FASHION).
FILTERS_PERMUTED ?= results/mnist-permuted
FILTERS_FASHION  ?= results/fashion-mnist
filters: $(STAMP)
	$(BIN)/torchkron reproduce --out runs/mnist-filters --resume --variants original one-kron-mat two-kron-mat --seeds 1 --jobs 2 --no-compare --no-plots $(DATA_ARG)
	$(BIN)/torchkron report results/mnist-permuted --baseline results/mnist --filters-from runs/mnist-filters $(FILTERS_PERMUTED)
	$(BIN)/torchkron report results/fashion-mnist --baseline results/mnist --filters-from $(FILTERS_FASHION)

# The maintainers' path: regenerate every committed table and plot in results/ from the
# committed run files (nothing is retrained), then the README and docs/.
results: $(STAMP)
	$(BIN)/torchkron report results/mnist
	$(BIN)/torchkron report results/mnist-permuted --baseline results/mnist
	$(BIN)/torchkron report results/fashion-mnist --baseline results/mnist
	$(BIN)/torchkron sweep --out results/sweep --report-only
	$(BIN)/torchkron compress --out results/compress --report-only
	$(BIN)/torchkron lm report results/lm
	$(MAKE) lm-v2-report lm-compress-report adapters-report
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

# The fine-tune settings of the compress study (docs/frontier.md): activation-aware
# conversion and distillation, 3 seeds at five ranks, one seed at the rest; resumable
# (finished runs are kept). COMPRESS_OUT=results/compress adds them to the committed study.
COMPRESS_OUT ?= runs/compress
COMPRESS_SET := --out $(COMPRESS_OUT) --resume --layers hidden --no-scratch --no-plots $(DATA_ARG) $(ARGS)
compress-settings: $(STAMP)
	$(BIN)/torchkron compress $(COMPRESS_SET) --ranks 1 2 4 8 16 --finetune-seeds 3 --calibration 1024
	$(BIN)/torchkron compress $(COMPRESS_SET) --ranks 1 2 4 8 16 --finetune-seeds 3 --calibration 1024 --distill
	$(BIN)/torchkron compress $(COMPRESS_SET) --ranks 1 2 4 8 16 --finetune-seeds 3
	$(BIN)/torchkron compress $(COMPRESS_SET) --ranks 1 2 4 8 16 --finetune-seeds 3 --distill
	$(BIN)/torchkron compress $(COMPRESS_SET) --calibration 1024 --distill
	$(BIN)/torchkron compress $(COMPRESS_SET) --calibration 1024
	$(BIN)/torchkron compress --out $(COMPRESS_OUT) --report-only

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

# LoKr (accelerated) against LoRA at equal trainable parameters, adapting the MNIST MLP to
# Fashion-MNIST (docs/adapters.md); needs PEFT (the hf extra). Finished runs are kept, so
# it resumes; a missing source model is retrained into results/adapters/source first.
adapters: $(STAMP)
	$(BIN)/torchkron adapt --out results/adapters --jobs 2 $(ADAPT_DATA_ARG) $(ARGS)

adapters-report: $(STAMP)
	$(BIN)/torchkron adapt --out results/adapters --report-only

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
