# `make run` sets up and runs the service locally; `make test` runs the test suite, whose first
# step (tests/conftest.py) installs or names the programs it needs: scripts/test_prerequisites.py.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(PYTHON) scripts/run_local.py

# Three test processes on two cores (pytest-xdist), each taking whole files: most tests wait on real servers and
# worker processes rather than on the CPU. Everything runs, the Postgres twins included.
test: $(STAMP)
	$(PYTHON) -m pytest -q -n 3 --dist loadfile

lint: $(STAMP)
	$(PYTHON) -m ruff check .

bench: $(STAMP)
	$(PYTHON) bench/bench_pipeline.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
