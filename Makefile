# Two commands for a fresh machine: `make run` (the whole job on the built-in digits) and `make test`.
# Each creates .venv here if missing and installs the locked versions into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test test-fast lint lock clean

install: $(STAMP)

$(STAMP): requirements.lock setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(PY) --quiet -r requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) --quiet --no-deps -e .
	touch $(STAMP)

run: install
	$(VENV)/bin/vae run

# pytest exits 5 when it collects nothing: say so loudly instead of passing silently.
# Whole files go to the two workers in the order tests/conftest.py sets (the slowest first);
# --no-loadscope-reorder stops xdist from reordering them by their number of tests.
test: install
	@$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: install
	$(MAKE) test PYTEST_ARGS="-m 'not slow'"

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

lock:
	$(VENV)/bin/uv pip compile setup.py --extra dev --extra airflow --extra dask --python-version 3.11 --no-header -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
