# Two commands on a fresh machine: `make demo` (install + train the demo preset on CPU) and `make test`.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/docval-sft
DEMO_DIR ?= demo-out
# Tools that write the lock and resolve the lowest versions (pinned in requirements/tools.txt), and the venv of
# `make test-lowest`.
TOOLS_VENV ?= .venv-tools
LOWEST_VENV ?= .venv-lowest
LOCK := requirements/lock.txt
# Nothing is downloaded at run time: local model directories only.
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lock check-lock test-lowest mutants clean

# make/CI install exactly the lock: every package pinned, torch the CPU build these machines keep on disk (pip finds
# it through its find-links). A changed lock rebuilds the venv, so no package outside the lock lingers.
$(VENV)/.locked: $(LOCK)
	@$(MAKE) --no-print-directory check-lock
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r $(LOCK)
	touch $@

# --no-build-isolation: the editable install is built with the locked setuptools, not a fresh download.
# pip check fails when pyproject.toml asks for something the lock lacks (then run `make lock`).
$(VENV)/.installed: $(VENV)/.locked pyproject.toml
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed

# The demo-learn preset trains every weight of the tiny model (600 steps, a few CPU minutes) until its greedy outputs
# are parsable 7-step answers with boxes; evaluate scores it on the held-out records, sample draws its box.
demo: install
	$(CLI) make-demo-data $(DEMO_DIR)
	$(CLI) validate-data --train-data $(DEMO_DIR)/D3_train.json --val-data $(DEMO_DIR)/D4_val.json \
		--image-dir $(DEMO_DIR)/images --model $(DEMO_DIR)/tiny-gemma3 --max-length 1024
	$(CLI) train --preset demo-learn --model $(DEMO_DIR)/tiny-gemma3 --train-data $(DEMO_DIR)/D3_train.json \
		--val-data $(DEMO_DIR)/D4_val.json --image-dir $(DEMO_DIR)/images --output-dir $(DEMO_DIR)/run --overwrite
	$(CLI) evaluate --adapter $(DEMO_DIR)/run/final --test-data $(DEMO_DIR)/D_test.json --image-dir $(DEMO_DIR)/images \
		--output-dir $(DEMO_DIR)/eval --overwrite --batch-size 8
	$(CLI) sample --adapter $(DEMO_DIR)/run/final --data $(DEMO_DIR)/D_test.json --image-dir $(DEMO_DIR)/images \
		--index 0 --out $(DEMO_DIR)/sample.png

test: install
	$(PY) -m pytest -q

# Mutation testing of the modules that decide what is learned and how it is scored ([tool.mutmut] in pyproject.toml,
# docs/testing.md). mutmut works in mutants/ (git-ignored) and keeps its results there, so a second run only redoes
# what changed. One module: `make mutants MUTANTS='docval_sft.metrics.*'`. MUTANT_JOBS: parallel test processes.
MUTANTS ?=
MUTANT_JOBS ?= 2
mutants: install
	$(PY) -m mutmut run --max-children $(MUTANT_JOBS) $(MUTANTS)
	$(PY) docs/mutant_rates.py

$(TOOLS_VENV)/.installed: requirements/tools.txt
	rm -rf $(TOOLS_VENV)
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet -r requirements/tools.txt
	touch $@

# Re-resolve the lock from pyproject.toml (dependencies + the dev extra + the build requirements) and
# constraints.txt (torch). Existing pins are kept while they still satisfy pyproject; `make lock UPGRADE=1` takes
# the newest releases instead (then run `make test` before committing the lock). pip-compile works on a copy, so
# an unchanged lock keeps its timestamp and the venvs built from it stay.
COMPILE = cp $(2) $(TOOLS_VENV)/out.txt && CUSTOM_COMPILE_COMMAND="make lock" $(TOOLS_VENV)/bin/pip-compile --quiet \
	$(if $(UPGRADE),--upgrade) --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	--output-file $(TOOLS_VENV)/out.txt $(1) && { cmp -s $(TOOLS_VENV)/out.txt $(2) || cp $(TOOLS_VENV)/out.txt $(2); }
lock: $(TOOLS_VENV)/.installed
	$(call COMPILE,requirements/tools.in,requirements/tools.txt)
	$(call COMPILE,--all-build-deps --extra dev --constraint constraints.txt pyproject.toml,$(LOCK))
	@$(MAKE) --no-print-directory check-lock

# A CUDA torch (and the nvidia-*/triton wheels it pulls) is several GB: the lock must name the CPU build only.
check-lock:
	@grep -q '^torch==.*+cpu$$' $(LOCK) || { echo "$(LOCK): torch is not the +cpu build"; exit 1; }
	@! grep -n -i -E '^(nvidia-|triton|cuda-)' $(LOCK) || { echo "$(LOCK): CUDA packages above"; exit 1; }

# The suite against the lowest versions pyproject.toml allows for its direct dependencies (dev extra included),
# the rest resolved by uv as usual. torch stays the locked CPU build: pip installs it from the local file first
# (uv does not look there), and uv is held to that exact version, so it neither downgrades it nor takes a CUDA one.
$(LOWEST_VENV)/.installed: pyproject.toml $(LOCK) $(TOOLS_VENV)/.installed
	rm -rf $(LOWEST_VENV)
	$(PYTHON) -m venv $(LOWEST_VENV)
	grep '^torch==' $(LOCK) > $(LOWEST_VENV)/torch.txt
	$(LOWEST_VENV)/bin/pip install --quiet -r $(LOWEST_VENV)/torch.txt
	$(TOOLS_VENV)/bin/uv pip install --quiet --python $(LOWEST_VENV)/bin/python --resolution lowest-direct \
		--constraint $(LOWEST_VENV)/torch.txt -e '.[dev]'
	$(LOWEST_VENV)/bin/python -m pip check
	$(LOWEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LOWEST_VENV)/versions.txt
	touch $@

test-lowest: $(LOWEST_VENV)/.installed
	@grep -i -E '^(torch|transformers|trl|peft|accelerate|datasets|bitsandbytes|tokenizers|pillow|typer|rich|pyyaml|pytest|hypothesis|tensorboard)==' $(LOWEST_VENV)/versions.txt | tr '\n' ' '; echo
	$(LOWEST_VENV)/bin/python -m pytest -q

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
