# The two set-up commands of the README. Each creates .venv in the repo and installs into it, idempotently:
# the install runs again only when pyproject.toml changes.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rnnkit-installed
PYTHON ?= python3

.PHONY: demo test test-slow lint bench clean

# Python writes the bytecode of what it imports into .venv (and the repo's __pycache__, ignored by git) even where
# the shell sets PYTHONDONTWRITEBYTECODE: without it every process of the tests compiles torch, scikit-learn and
# the rest from source again (seconds each).
unexport PYTHONDONTWRITEBYTECODE

# The tests test the extras too. A current pip first: the one a new venv brings (23.x) takes three times as long to
# resolve these extras. --no-compile: no bytecode up front for the thousands of files of torch and the rest (most of
# a fresh install's time on two cores); Python compiles what is imported, once, on first import.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=25.1'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e '.[dev,export,tensorboard,docs,speech,music,bpe,tune]'
	# the CTC beam search's second oracle in the tests; --no-deps: its metadata caps numpy below 2 (see pyproject.toml)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile --no-deps 'pyctcdecode==0.5.0' 'pygtrie>=2.1'
	touch $(STAMP)

# The main job: train a character-level LSTM on the built-in corpus for a few minutes, then generate.
# Each run gets a fresh folder (runs/demo-YYYYmmdd-HHMMSS), so running it again never touches an earlier run.
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)
DEMO_MINUTES ?= 5

demo: $(STAMP)
	$(VENV)/bin/rnnkit train lm --out $(DEMO_RUN) --max-minutes $(DEMO_MINUTES)
	$(VENV)/bin/rnnkit sample --run $(DEMO_RUN) --prompt "def " --echo-prompt --length 400 --temperature 0.8

# The test suite (what .ci/run calls): lint, the strict docs build, then the tests on the CPU, on as many
# pytest-xdist workers as there are cores; each test file runs on one worker (loadfile), so a module-scoped fixture
# (a trained run) is built once. Tests marked slow (kill-and-resume runs, torchrun, the sktime suites, more drawn
# fuzz cases, gradcheck of the autograd loops...) are left to test-slow, which .ci/run runs after this at every stop.
PYTEST := $(PY) -m pytest -q -n auto --dist loadfile

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -d site  # the docs site (mkdocs.yml); a warning fails
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

bench: $(STAMP)
	$(VENV)/bin/rnnkit bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
