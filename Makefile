# The two commands a user needs:  `make demo`  and  `make test`.
# Both set up .venv/ first (once); `make setup` does only that.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_VERSION   ?= 2.13.0
# Where the CPU build of torch comes from on a machine without CUDA, when no local wheel is configured.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_DIR ?= demo_output

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# Install torch before anything else: an unpinned torch from the index pulls several GB of CUDA wheels.
	@# A local CPU wheel (pip's find-links) is used when there is one; otherwise the CPU index supplies it.
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install "torch==$(TORCH_VERSION)"; \
	elif $(BIN)/pip install --no-index --no-deps "torch==$(TORCH_VERSION)" >/dev/null 2>&1; then \
		$(BIN)/pip install "torch==$(TORCH_VERSION)"; \
	else \
		$(BIN)/pip install "torch==$(TORCH_VERSION)" --extra-index-url $(TORCH_CPU_INDEX); \
	fi
	$(BIN)/pip install -e ".[data,test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/medgen3d demo --out $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/flake8 src tests benchmarks
	$(BIN)/isort --check-only src tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) build src/*.egg-info .pytest_cache
