# Set-up and everyday commands. Every target creates .venv and installs the lock first,
# idempotently (a stamp file records the installed lock).
#
#   make test    run the whole test suite (what CI runs)
#   make demo    init a small model, train a tokenizer, embed an image and a text
#   make bench   encoder throughput: ours vs a plainly written reference
#   make lint    ruff
#   make lock    re-resolve requirements-dev.lock from pyproject.toml

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements-dev.lock
STAMP := $(VENV)/.installed-stamp
UV_VERSION := 0.13.9
# uv ignores pip's configuration: hand it the local wheel folders where pip has them,
# or it fetches a multi-GB CUDA torch instead of the CPU wheel.
FIND_LINKS := $(foreach d,$(PIP_FIND_LINKS),--find-links $(d))

.PHONY: install test lint format lock bench demo clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)   # a pip-seeded venv: kfp's local runner calls `python -m pip`

$(STAMP): $(LOCK) pyproject.toml | $(BIN)/python
	@start=$$(date +%s); \
	$(BIN)/python -m pip install -q uv==$(UV_VERSION) && \
	$(BIN)/uv pip install -q --python $(BIN)/python $(FIND_LINKS) --compile-bytecode -r $(LOCK) -e . && \
	echo "install: $$(( $$(date +%s) - start )) s"
	@touch $@

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock: | $(BIN)/python
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 $(FIND_LINKS) -o $(LOCK)
	# One lock for CPU and CUDA hosts: drop the local label of the CPU wheel.
	sed -i -E 's/^torch==([0-9.]+)\+[a-z0-9]+$$/torch==\1/' $(LOCK)

bench: $(STAMP)
	$(BIN)/python bench/encoders.py

demo: $(STAMP)
	bash scripts/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
