# Two commands on a fresh machine: `make demo` (install + train the demo preset on CPU) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/docval-sft
DEMO_DIR ?= demo-out
# Nothing is downloaded at run time: local model directories only.
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test clean

# constraints.txt pins torch==2.13.0 (the CPU build on these machines); the library itself does not pin torch.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(CLI) make-demo-data $(DEMO_DIR)
	$(CLI) validate-data --train-data $(DEMO_DIR)/D3_train.json --val-data $(DEMO_DIR)/D4_val.json \
		--image-dir $(DEMO_DIR)/images --model $(DEMO_DIR)/tiny-gemma3 --max-length 1024
	$(CLI) train --preset demo --train-data $(DEMO_DIR)/D3_train.json --val-data $(DEMO_DIR)/D4_val.json \
		--image-dir $(DEMO_DIR)/images --output-dir $(DEMO_DIR)/run --overwrite

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
