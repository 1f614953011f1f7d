# The course's commands. Each target creates the virtual environment (.venv) when it is missing.
#   make lab         start JupyterLab on the course
#   make test        the full test suite (what CI runs)
#   make test-portable   the suite twice more, as a learner's machine may run it: with one core kept
#                    busy by another process, then with OMP_NUM_THREADS=1 (run before submitting)
#   make exercises   regenerate exercises/ from solutions/ (FORCE=1 to overwrite edited ones)
#   make work        copy the exercises to work/ (yours to edit; never overwritten)
#   make execute     run every notebook into executed/ (git-ignored) with its outputs and figures
#   make clean-notebooks   strip outputs from the committed notebooks
#   make lint        ruff over helpers, tests and notebooks
#   make time-notebooks   run every notebook from a cold cache and print its wall time (quiet machine)
#   make book        the course as a web site, _build/html/index.html: one execution per notebook (make test's
#                    when current, else its own; FRESH=1: always its own)
#   make test-browser    JupyterLab in headless chromium: every widget moved, one exercise's check seen

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: book test-browser
.PHONY: setup lab test test-busy test-one-thread test-portable exercises work execute clean-notebooks lint benchmark time-notebooks

setup: $(STAMP)

$(STAMP): requirements.txt requirements-executorch.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-executorch.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=.

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest --durations=15

# One core kept busy by a separate process (stopped however the suite ends), as on a shared machine.
test-busy: $(STAMP)
	@bash -c 'yes > /dev/null & busy=$$!; trap "kill $$busy" EXIT; echo "one core kept busy by pid $$busy"; \
		MPLBACKEND=Agg $(BIN)/python -m pytest --durations=15'

test-one-thread: $(STAMP)
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(BIN)/python -m pytest --durations=15

test-portable: test-busy test-one-thread

exercises: $(STAMP)
	$(BIN)/python -m helpers.labs generate $(if $(FORCE),--force,)

work: $(STAMP)
	$(BIN)/python -m helpers.labs copy

execute: $(STAMP)
	mkdir -p executed
	for nb in notebooks/*.ipynb solutions/*.ipynb; do \
		env -u MPLBACKEND $(BIN)/jupyter nbconvert --to notebook --execute "$$nb" --output-dir executed || exit 1; \
	done

clean-notebooks: $(STAMP)
	$(BIN)/python -m helpers.labs strip

lint: $(STAMP)
	$(BIN)/ruff check helpers tests scripts notebooks solutions conftest.py

benchmark: $(STAMP)
	$(BIN)/python scripts/benchmark.py

time-notebooks: $(STAMP)
	$(BIN)/python scripts/time_notebooks.py --cold

book: $(STAMP)
	$(BIN)/python -m helpers.book $(if $(FRESH),--fresh,)

test-browser: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -v -rs tests/test_browser.py
